"""Conversion: the right length at the model's rate, seamless chunks, seeded, and clear errors.

The model is an untrained tiny generator (fixed seed) exported like a trained one: conversion does
not care whether the weights are good, only that the pipeline around them is right.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from arvc.config import load_config, rvc_config_list
from arvc.infer.convert import ConvertError, _aligned_start, convert, load_voice_model
from arvc.infer.index import FeatureIndexError
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.model.nsf import SineGen
from arvc.modelfile.export import export_generator
from arvc.modelfile.read import PretrainedError

SR = 16000


def _voice(seconds: float, sr: int = SR) -> np.ndarray:
    """A gliding, loudness-modulated tone with a quiet gap and a little noise: speech-like enough."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t)
    level = 0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t)
    level[(t > 1.0) & (t < 1.15)] = 0.02
    noise = np.random.default_rng(0).standard_normal(len(t))
    return (0.3 * level * np.sin(2 * np.pi * np.cumsum(f0) / sr) + 0.005 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("voice")
    cfg = load_config("tiny")
    torch.manual_seed(0)
    export_generator(Synthesizer(cfg), cfg, folder / "export")
    net, loaded_cfg = load_voice_model(folder / "export")
    sf.write(folder / "in.wav", _voice(2.0), SR)
    return net, loaded_cfg, folder


@pytest.fixture(scope="module")
def one_pass(model):
    """The input converted in one chunk (default seed), shared by the tests that compare against it."""
    net, cfg, folder = model
    convert(net, cfg, folder / "in.wav", folder / "one.wav")
    return _read(folder / "one.wav")


def _read(path) -> np.ndarray:
    audio, sr = sf.read(path, dtype="float64")
    assert sr == SR
    return audio


def test_voice_model_is_ready_for_inference(model):
    net, cfg, folder = model
    assert cfg.name == "tiny" and not net.training
    assert not any(k.endswith(("weight_g", "weight_v")) for k in net.state_dict())  # weight norm folded


def test_output_is_finite_at_the_model_rate_with_the_input_duration(model, tmp_path):
    net, cfg, _ = model
    sf.write(tmp_path / "in44.wav", _voice(1.2345, 44100), 44100)  # resampled to 16 kHz on the way in
    convert(net, cfg, tmp_path / "in44.wav", tmp_path / "out.wav")
    out = _read(tmp_path / "out.wav")
    assert len(out) == round(int(1.2345 * 44100) / 44100 * cfg.data.sampling_rate)
    assert np.isfinite(out).all() and 0 < np.abs(out).max() <= 0.99


def test_chunked_conversion_has_no_seams(model, one_pass, tmp_path):
    net, cfg, folder = model
    calls = []
    convert(
        net,
        cfg,
        folder / "in.wav",
        tmp_path / "three.wav",
        chunk_seconds=0.8,
        progress=lambda *a: calls.append(a),
    )
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    one, three = one_pass, _read(tmp_path / "three.wav")
    assert len(one) == len(three) == round(2.0 * SR)
    # Chunks differ from one pass only by the prior's noise draws: the same waveform within a tenth (8 %).
    level = np.sqrt(np.mean(one**2))
    assert np.sqrt(np.mean((one - three) ** 2)) < 0.1 * level
    # No step at the seams: every 20 ms stretch agrees with the one-pass conversion as well as the whole does.
    window = 320
    local = np.sqrt(np.convolve((one - three) ** 2, np.ones(window) / window, mode="valid"))
    # 0.11 measured; hard cuts without context or crossfade: 0.37 (measured against the DC-free output —
    # before conversion high-passed its output, `level` was mostly the generator's DC offset)
    assert local.max() < 0.2 * level
    jumps = np.abs(np.diff(three))
    assert jumps.max() <= 1.2 * np.abs(np.diff(one)).max()


def test_conversion_is_seeded(model, one_pass, tmp_path):
    net, cfg, folder = model
    torch.manual_seed(123)  # the global RNG does not matter, and is left as it was
    state = torch.get_rng_state()
    convert(net, cfg, folder / "in.wav", tmp_path / "again.wav")
    assert np.array_equal(_read(tmp_path / "again.wav"), one_pass)
    assert torch.equal(torch.get_rng_state(), state)


def test_retrieval_from_an_index_changes_the_features(model, one_pass, tmp_path):
    faiss = pytest.importorskip("faiss")
    from arvc.infer.index import FeatureIndex

    net, cfg, folder = model
    vectors = np.random.default_rng(1).standard_normal((200, cfg.data.feature_dim)).astype(np.float32)
    flat = faiss.IndexFlatL2(cfg.data.feature_dim)
    flat.add(vectors)
    index = FeatureIndex(flat, vectors, tmp_path / "x.index")
    convert(net, cfg, folder / "in.wav", tmp_path / "mixed.wav", index=index, index_rate=0.75)
    plain, mixed = one_pass, _read(tmp_path / "mixed.wav")
    assert np.isfinite(mixed).all() and len(mixed) == len(plain)
    assert not np.allclose(plain, mixed)


def test_window_starts_keep_the_sine_excitation_in_phase():
    """Where two chunk windows overlap, the decoder's sine source must agree, or crossfades cancel."""
    sr, hop, frames = 16000, 160, 400
    f0 = np.full(frames, 173.3, dtype=np.float32)
    f0[150:170] = 0  # an unvoiced stretch before the overlap
    cycles = np.concatenate([[0.0], np.cumsum(hop * np.mod(f0.astype(np.float64) / sr, 1.0))])
    gen = SineGen(sr, noise_std=0.0)

    def sine(start: int) -> np.ndarray:
        wave, _, _ = gen(torch.from_numpy(f0[start:])[None], hop)
        return wave[0, :, 0].numpy()

    whole = sine(0)
    error = {s: np.abs(sine(s) - whole[s * hop :]).max() for s in range(300 - 24, 301, 2)}
    aligned = _aligned_start(300, 0, cycles)
    assert error[aligned] == min(error.values())
    assert error[aligned] < 0.03 < 0.1 < max(error.values())  # sine amplitude is 0.1


def test_models_from_checkpoints_and_rvc_files_load_for_inference(tmp_path):
    cfg = load_config("tiny")
    net = Synthesizer(cfg)
    weights = {k: v.half() for k, v in net.state_dict().items() if not k.startswith("enc_q.")}
    rvc = {"weight": weights, "config": rvc_config_list(cfg), "sr": 16000, "f0": 1, "version": "v2"}
    torch.save(rvc, tmp_path / "voice.pth")
    loaded, loaded_cfg = load_voice_model(tmp_path / "voice.pth")
    assert loaded_cfg.data.feature_dim == 80 and loaded_cfg.model.upsample_rates == cfg.model.upsample_rates
    torch.save({"model": MultiPeriodDiscriminator(cfg).state_dict()}, tmp_path / "D.pth")
    with pytest.raises(PretrainedError, match="discriminator file"):
        load_voice_model(tmp_path / "D.pth")


def test_bad_inputs_are_clear_errors(model, tmp_path):
    net, cfg, folder = model
    with pytest.raises(ConvertError, match="does not exist"):
        convert(net, cfg, tmp_path / "missing.wav", tmp_path / "o.wav")
    (tmp_path / "text.wav").write_text("not audio")
    with pytest.raises(ConvertError, match="cannot read the input audio"):
        convert(net, cfg, tmp_path / "text.wav", tmp_path / "o.wav")
    sf.write(tmp_path / "blip.wav", np.zeros(800, dtype=np.float32), SR)
    with pytest.raises(ConvertError, match="0.050 s long; need at least 0.1 s"):
        convert(net, cfg, tmp_path / "blip.wav", tmp_path / "o.wav")
    with pytest.raises(ConvertError, match="needs an index"):
        convert(net, cfg, folder / "in.wav", tmp_path / "o.wav", index_rate=0.5)
    with pytest.raises(ConvertError, match="unknown f0 method 'yin'"):
        convert(net, cfg, folder / "in.wav", tmp_path / "o.wav", f0_method="yin")
    with pytest.raises(ConvertError, match="pitch 60 semitones"):
        convert(net, cfg, folder / "in.wav", tmp_path / "o.wav", pitch=60)
    with pytest.raises(ConvertError, match="80-d mel features.*--features mel"):
        convert(net, cfg, folder / "in.wav", tmp_path / "o.wav", features="hubert")
    with pytest.raises(ConvertError, match="768-d HuBERT.*--features hubert --hubert PATH"):
        convert(net, load_config("v2-40k"), folder / "in.wav", tmp_path / "o.wav", features="mel")
    assert not (tmp_path / "o.wav").exists()


def test_index_of_another_feature_size_is_refused(model, tmp_path):
    faiss = pytest.importorskip("faiss")
    net, cfg, folder = model
    index = faiss.IndexFlatL2(768)
    index.add(np.zeros((4, 768), dtype=np.float32))
    faiss.write_index(index, str(tmp_path / "added.index"))
    with pytest.raises(FeatureIndexError, match="768-d features .HuBERT.* model uses 80-d"):
        convert(
            net, cfg, folder / "in.wav", tmp_path / "o.wav", index=tmp_path / "added.index", index_rate=0.5
        )


def test_output_has_no_dc_offset_though_the_generator_emits_one(model, tmp_path):
    """Generators emit DC that training barely constrains (issue 15: 0.05-0.3 of full scale, from digital
    silence too); conversion high-passes it away from the first sample on, and leaves the voice band."""
    net, cfg, folder = model
    sf.write(tmp_path / "silence.wav", np.zeros(SR, np.float32), SR)
    with torch.no_grad():
        n = 100
        raw = net.infer(
            torch.zeros(1, n, cfg.data.feature_dim),
            torch.tensor([n]),
            torch.full((1, n), 50, dtype=torch.long),
            torch.full((1, n), 150.0),
            torch.zeros(1, dtype=torch.long),
        )[0, 0].double()
    assert abs(raw.mean()) > 0.05 * raw.std(), "premise: the untrained generator's own output has DC"
    for source in (folder / "in.wav", tmp_path / "silence.wav"):
        out = _read(convert(net, cfg, source, tmp_path / f"{source.stem}-out.wav"))
        head = out[: SR // 20]  # the first 50 ms too: no start-up transient
        assert abs(out.mean()) < 0.01 * out.std() and abs(head.mean()) < 0.05 * out.std()
    kept = np.sqrt(np.mean(_read(folder / "one.wav") ** 2))
    assert kept > 0.5 * float(raw.std()), "the high-pass leaves the voice band"


def test_rvc_v1_model_converts_with_layer_9_through_final_proj(tmp_path):
    """An RVC v1 voice (256-d content features) converts with a ContentVec folder that has final_proj:
    its features are layer 9 through final_proj, as RVC v1 computes them."""
    transformers = pytest.importorskip("transformers")

    class WithFinalProj(transformers.HubertModel):
        def __init__(self, config):
            super().__init__(config)
            self.final_proj = torch.nn.Linear(config.hidden_size, config.classifier_proj_size)

    torch.manual_seed(0)
    hubert = transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=9, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, classifier_proj_size=256,
    )  # fmt: skip
    WithFinalProj(hubert).save_pretrained(tmp_path / "contentvec")
    from arvc.config import apply_overrides

    cfg = apply_overrides(load_config("tiny"), {"data.feature_dim": 256})
    weights = {k: v.half() for k, v in Synthesizer(cfg).state_dict().items() if not k.startswith("enc_q.")}
    rvc = {"weight": weights, "config": rvc_config_list(cfg), "sr": 16000, "f0": 1, "version": "v1"}
    torch.save(rvc, tmp_path / "v1.pth")
    net, loaded = load_voice_model(tmp_path / "v1.pth")
    assert loaded.data.feature_dim == 256
    sf.write(tmp_path / "in.wav", _voice(1.0), SR)
    with pytest.raises(ConvertError, match="256-d HuBERT/ContentVec features"):
        convert(net, loaded, tmp_path / "in.wav", tmp_path / "out.wav")  # mel would not fit a v1 model
    convert(net, loaded, tmp_path / "in.wav", tmp_path / "out.wav", features="hubert",
            hubert_path=tmp_path / "contentvec")  # fmt: skip
    out = _read(tmp_path / "out.wav")
    assert len(out) == SR and np.isfinite(out).all()
