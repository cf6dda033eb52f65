"""RMVPE: RVC's rmvpe.pt layout loads strictly, decoding gives back the pitch put in, chunks join exactly,
bad files are clear errors. No real rmvpe.pt here: random weights in its layout stand in for it."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from arvc.audio import rmvpe
from arvc.audio.f0 import extract_f0
from arvc.audio.mel import mel_filterbank
from arvc.audio.rmvpe import RMVPEError, RMVPENet, decode_salience, load_rmvpe, rmvpe_f0, rmvpe_mel

FIXTURE = Path(__file__).with_name("fixtures") / "rmvpe_keys.json"


def test_the_network_has_the_layout_of_rvcs_rmvpe_pt():
    layout = {k: list(v.shape) for k, v in RMVPENet().state_dict().items()}
    assert layout == json.loads(FIXTURE.read_text())
    # read off RVC's E2E(4, 1, (2, 2)): 5 encoder levels 16..256 wide, 4 intermediate at 512, BiGRU 384->256
    assert layout["unet.encoder.layers.0.conv.0.conv.0.weight"] == [16, 1, 3, 3]
    assert layout["unet.encoder.layers.0.conv.0.shortcut.weight"] == [16, 1, 1, 1]
    assert "unet.encoder.layers.0.conv.1.shortcut.weight" not in layout  # same width: no shortcut conv
    assert layout["unet.encoder.layers.4.conv.3.conv.4.running_var"] == [256]
    assert layout["unet.intermediate.layers.0.conv.0.shortcut.weight"] == [512, 256, 1, 1]
    assert layout["unet.decoder.layers.0.conv1.0.weight"] == [512, 256, 3, 3]  # ConvTranspose2d: in, out
    assert layout["unet.decoder.layers.4.conv2.0.shortcut.weight"] == [16, 32, 1, 1]
    assert layout["cnn.weight"] == [3, 16, 3, 3] and layout["cnn.bias"] == [3]
    assert layout["fc.0.gru.weight_ih_l0_reverse"] == [768, 384] and layout["fc.1.weight"] == [360, 512]


def test_rvc_layout_weights_load_strictly_and_run(rmvpe_weights):
    path, state = rmvpe_weights
    net = load_rmvpe(path)
    assert not net.training
    assert all(torch.equal(v.float(), state[k].float()) for k, v in net.state_dict().items())
    mel = torch.randn(1, 128, 64)
    salience = net(mel)
    assert salience.shape == (1, 64, 360) and bool(((salience >= 0) & (salience <= 1)).all())


def test_bad_files_are_clear_errors(rmvpe_weights, tmp_path):
    path, state = rmvpe_weights
    with pytest.raises(RMVPEError, match="does not exist"):
        load_rmvpe(tmp_path / "nowhere.pt")
    missing = dict(state)
    del missing["cnn.bias"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(RMVPEError, match=r"1 keys missing \(first: cnn.bias\)"):
        load_rmvpe(tmp_path / "missing.pt")
    reshaped = {**state, "fc.1.weight": torch.zeros(361, 512)}
    torch.save(reshaped, tmp_path / "shape.pt")
    with pytest.raises(RMVPEError, match=r"fc.1.weight \(361, 512\) \(expected \(360, 512\)\)"):
        load_rmvpe(tmp_path / "shape.pt")
    torch.save(
        {"weight": {"enc_p.emb_phone.weight": torch.zeros(2, 2)}, "config": [1]}, tmp_path / "voice.pth"
    )
    with pytest.raises(RMVPEError, match="not an RMVPE state dict .*weight, config"):
        load_rmvpe(tmp_path / "voice.pth")  # an RVC voice model given as the pitch model
    (tmp_path / "code.pt").write_bytes(
        pickle.dumps(Path("x"), protocol=2)
    )  # unpickling it would need arvc-foreign code
    with pytest.raises(RMVPEError, match="not a readable RMVPE state dict"):
        load_rmvpe(tmp_path / "code.pt")


def _bump(cents: np.ndarray, frames: int = 5) -> np.ndarray:
    """Salience of a pitch at `cents` per frame: a Gaussian over the bins (25 cents wide), peak 0.9."""
    bins = rmvpe.CENTS_OFFSET + rmvpe.CENTS_PER_BIN * np.arange(rmvpe.N_BINS)
    return 0.9 * np.exp(-0.5 * ((bins[None, :] - cents[:, None]) / 25.0) ** 2)


def test_decoding_gives_back_the_pitch_put_in():
    hz = np.array([65.0, 110.0, 220.5, 440.0, 987.7])
    cents = 1200 * np.log2(hz / 10.0)
    f0 = decode_salience(_bump(cents))
    # a symmetric bump: the 9-bin weighted mean lands on its centre; error from the bins cut off the window
    assert np.abs(1200 * np.log2(f0 / hz)).max() < 1.0
    quiet = _bump(cents) * (0.03 / 0.9)  # peak at the threshold: unvoiced, as RVC's `maxx <= thred`
    assert (decode_salience(quiet) == 0).all()
    edge = np.zeros((1, rmvpe.N_BINS))
    edge[0, 0], edge[0, 1] = 0.8, 0.2  # peak on bin 0: bins below the range weigh nothing
    expected = 10 * 2 ** ((rmvpe.CENTS_OFFSET + 0.2 * rmvpe.CENTS_PER_BIN) / 1200)
    assert decode_salience(edge)[0] == pytest.approx(expected, rel=1e-12)


class _PerFrame(torch.nn.Module):
    """A stand-in network that looks at each frame alone, so chunking must not change its output at all."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(128, 360)

    def forward(self, mel):
        assert mel.shape[-1] % 32 == 0, "the U-Net needs frames padded to a multiple of 32"
        return torch.sigmoid(self.linear(mel.transpose(1, 2)))


def test_chunks_join_exactly_where_the_network_allows():
    torch.manual_seed(0)
    net = _PerFrame()
    wave = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1  # 301 frames
    whole = rmvpe_f0(wave, net, threshold=0.0, chunk_frames=100_000)
    chunked = rmvpe_f0(wave, net, threshold=0.0, chunk_frames=64)
    assert len(whole) == len(chunked) == len(wave) // 160 + 1
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)  # the same frames, FMA-sized differences


@pytest.mark.parametrize("frames", [100, 331])
def test_the_mel_is_padded_with_zeros_as_rvc_pads_it(rmvpe_weights, frames):
    # RVC's RMVPE.mel2hidden (since RVC PR #1168) pads the log-mel at its end to a multiple of 32 frames
    # with zeros (F.pad(mel, (0, n_pad), mode="constant")), runs the network once and keeps the first
    # n_frames. A reflected pad changed the last frames' pitch (by ~500 cents on a 331-frame clip).
    path, _ = rmvpe_weights
    net = load_rmvpe(path)
    wave = np.random.default_rng(1).standard_normal((frames - 1) * 160).astype(np.float32) * 0.1
    mel = rmvpe_mel(torch.from_numpy(wave)[None])
    assert mel.shape[-1] == frames and frames % 32  # a length that needs padding
    n_pad = 32 * ((frames - 1) // 32 + 1) - frames
    with torch.no_grad():
        salience = net(torch.nn.functional.pad(mel, (0, n_pad), mode="constant"))[0, :frames]
    expected = decode_salience(salience.numpy(), threshold=0.0)
    f0 = rmvpe_f0(wave, net, threshold=0.0)
    np.testing.assert_array_equal(f0, expected)  # every frame, the last ones included


def test_front_end_is_rmvpes_log_mel():
    sr = 16000
    basis = mel_filterbank(sr, 1024, 128, 30.0, 8000.0, htk=True)
    # float64 recomputation of librosa's htk=True filterbank (Slaney-normalised triangles on HTK mels)
    mels = np.linspace(2595 * np.log10(1 + 30 / 700), 2595 * np.log10(1 + 8000 / 700), 130)
    edges = 700 * (10 ** (mels / 2595) - 1)
    freqs = np.linspace(0, sr / 2, 513)
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:, None] - edges[1:-1, None])
    expected = np.maximum(0, np.minimum(lower, upper)) * (2 / (edges[2:] - edges[:-2]))[:, None]
    np.testing.assert_allclose(basis, expected, rtol=1e-10, atol=1e-14)
    t = np.arange(sr) / sr
    mel = rmvpe_mel(torch.tensor(0.5 * np.sin(2 * np.pi * 440 * t), dtype=torch.float32)[None])
    assert mel.shape == (1, 128, sr // 160 + 1)
    band = int(mel[0, :, 50].argmax())
    assert edges[band] <= 440 <= edges[band + 2]  # the loudest band is one whose triangle holds 440 Hz


def test_extract_f0_runs_rmvpe_on_the_users_file(rmvpe_weights):
    path, _ = rmvpe_weights
    wave = (0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)).astype(np.float32)
    with pytest.raises(ValueError, match="--f0 rmvpe needs --rmvpe PATH"):
        extract_f0(wave, "rmvpe")
    f0 = extract_f0(wave, "rmvpe", rmvpe_path=path)
    assert f0.shape == (8000 // 160 + 1,)
    voiced = f0[f0 > 0]
    assert ((voiced >= 50) & (voiced <= 1100)).all(), "outside the limits is unvoiced, as for the others"
