"""Model files in: every format is recognised, loads strictly into a fresh model, and misfits are named.

RVC-format files are built here in RVC's key layout (our models match it key for key, see
test_model.py) with random weights; full-size ones are shaped on the meta device and filled once.
"""

from __future__ import annotations

import logging

import pytest
import torch

from arvc.config import load_config, rvc_config_list
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.modelfile.export import export_generator
from arvc.modelfile.read import (
    PretrainedError,
    load_pretrained_discriminator,
    load_pretrained_generator,
    read_model_file,
)


def _shapes(name: str, part: str = "G", **data) -> dict[str, torch.Size]:
    cfg = load_config(name)
    for key, value in data.items():
        setattr(cfg.data, key, value)
    with torch.device("meta"):
        net = Synthesizer(cfg) if part == "G" else MultiPeriodDiscriminator(cfg)
    return {k: v.shape for k, v in net.state_dict().items()}


def _filled(shapes: dict, random: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    make = (lambda s: torch.randn(s, generator=gen)) if random else torch.zeros
    return {k: make(s).half() for k, s in shapes.items()}


@pytest.fixture(scope="module")
def rvc40(tmp_path_factory):
    """A random v2-40k generator as RVC training and inference files, and a model to load it into."""
    folder = tmp_path_factory.mktemp("rvc40")
    cfg = load_config("v2-40k")
    state = _filled(_shapes("v2-40k"), random=True)
    torch.save({"model": state, "iteration": 0, "learning_rate": 1e-4}, folder / "f0G40k.pth")
    inference = {k: v for k, v in state.items() if not k.startswith("enc_q.")}
    torch.save(
        {
            "weight": inference,
            "config": rvc_config_list(cfg),
            "sr": "40k",
            "f0": 1,
            "version": "v2",
            "info": "x",
        },
        folder / "voice.pth",
    )
    return folder, cfg, state, Synthesizer(cfg)


@pytest.fixture
def tiny():
    cfg = load_config("tiny")
    torch.manual_seed(1)
    return cfg, Synthesizer(cfg), MultiPeriodDiscriminator(cfg)


def _infer(net: Synthesizer, cfg, frames: int = 40) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    phone = torch.randn(1, frames, cfg.data.feature_dim, generator=gen)
    pitch = torch.randint(1, 255, (1, frames), generator=gen)
    torch.manual_seed(5)
    return net.eval().infer(
        phone, torch.tensor([frames]), pitch, torch.full((1, frames), 180.0), torch.tensor([0])
    )


def test_export_loads_strictly_into_a_fresh_model_and_infers_identically(tiny, tmp_path, caplog):
    cfg, net_g, _ = tiny
    export_generator(net_g, cfg, tmp_path / "export")
    torch.manual_seed(99)
    fresh = Synthesizer(cfg)
    with caplog.at_level(logging.INFO, logger="arvc"):
        mf = load_pretrained_generator(fresh, tmp_path / "export" / "model.safetensors", cfg)
    assert mf.kind == "arvc-export" and mf.config.name == "tiny"
    assert "enc_q keeps its fresh initialisation" in caplog.text
    for key, value in net_g.state_dict().items():
        if not key.startswith("enc_q."):
            assert torch.equal(fresh.state_dict()[key], value), key
    assert torch.equal(_infer(fresh, cfg), _infer(net_g, cfg))
    # model.json names the same export
    assert read_model_file(tmp_path / "export" / "model.json").n_params == mf.n_params


def test_arvc_checkpoint_loads_generator_and_discriminator(tiny, tmp_path):
    cfg, net_g, net_d = tiny
    hp = {"optimizer": "AdaBelief", "lr": 1e-3, "betas": (0.8, 0.99)}
    checkpoint = {
        "format": "arvc-checkpoint",
        "version": 1,
        "epoch": 7,
        "step": 70,
        "config": cfg.to_dict(),
        "generator": net_g.state_dict(),
        "discriminator": net_d.state_dict(),
        "optim_g": {"name": "AdaBelief", "hyperparameters": hp, "state": {}},
        "optim_d": {"name": "AdaBelief", "hyperparameters": hp, "state": {}},
    }
    torch.save(checkpoint, tmp_path / "ckpt_E00007_S00000070.pt")
    torch.manual_seed(42)
    g, d = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    mf = load_pretrained_generator(g, tmp_path / "ckpt_E00007_S00000070.pt", cfg)
    load_pretrained_discriminator(d, tmp_path / "ckpt_E00007_S00000070.pt", cfg)
    assert (mf.kind, mf.optimizer, mf.epoch, mf.step) == ("arvc-checkpoint", "AdaBelief", 7, 70)
    assert all(torch.equal(v, net_g.state_dict()[k]) for k, v in g.state_dict().items())
    assert all(torch.equal(v, net_d.state_dict()[k]) for k, v in d.state_dict().items())


def test_rvc_training_file_is_recognised_and_loads_for_fine_tuning(rvc40):
    folder, cfg, state, net = rvc40
    mf = load_pretrained_generator(net, folder / "f0G40k.pth", cfg)
    assert (mf.kind, mf.sample_rate, mf.version, mf.f0, mf.dtype) == ("rvc-train", 40000, "v2", 1, "float16")
    assert mf.config.name == "v2-40k" and mf.epoch == 0 and mf.discriminator is None
    loaded = net.state_dict()
    assert loaded["enc_q.pre.weight"].dtype == torch.float32  # fp16 file, converted to the model's dtype
    assert all(torch.equal(loaded[k], v.float()) for k, v in state.items())


def test_rvc_inference_file_loads_without_enc_q(rvc40, caplog):
    folder, cfg, state, net = rvc40
    with caplog.at_level(logging.INFO, logger="arvc"):
        mf = load_pretrained_generator(net, folder / "voice.pth", cfg)
    assert (mf.kind, mf.sample_rate, mf.version, mf.f0, mf.info) == ("rvc-inference", 40000, "v2", 1, "x")
    assert mf.config.model == cfg.model and mf.config.data.feature_dim == 768
    assert "enc_q keeps its fresh initialisation" in caplog.text
    assert torch.equal(net.state_dict()["dec.conv_post.weight"], state["dec.conv_post.weight"].float())


def test_32k_file_into_40k_config_names_the_keys(rvc40, tmp_path):
    _, cfg, _, net = rvc40
    torch.save({"model": _filled(_shapes("v2-32k"))}, tmp_path / "f0G32k.pth")
    with pytest.raises(PretrainedError) as info:
        load_pretrained_generator(net, tmp_path / "f0G32k.pth", cfg)
    message = str(info.value)
    assert "dec.ups.0.weight_v file [512, 256, 20] vs model [512, 256, 16]" in message
    assert "file: rvc-train (generator), 32000 Hz, v2, f0=1" in message and "config: 40000 Hz" in message
    assert "a 32000 Hz file needs v2-32k" in message
    assert "Nothing was loaded" in message


def test_v1_file_into_v2_config_names_the_feature_layer(rvc40, tmp_path):
    _, cfg, _, net = rvc40
    torch.save({"model": _filled(_shapes("v2-40k", feature_dim=256))}, tmp_path / "G_v1.pth")
    with pytest.raises(PretrainedError) as info:
        load_pretrained_generator(net, tmp_path / "G_v1.pth", cfg)
    assert "rvc-train (generator), 40000 Hz, v1, f0=1" in str(info.value)  # recognised as RVC v1 40k
    assert "enc_p.emb_phone.weight file [192, 256] vs model [192, 768]" in str(info.value)


def test_discriminator_file_given_as_generator_and_back(tiny, tmp_path):
    cfg, net_g, net_d = tiny
    torch.save({"model": net_d.state_dict()}, tmp_path / "D.pth")
    torch.save({"model": net_g.state_dict()}, tmp_path / "G.pth")
    assert read_model_file(tmp_path / "D.pth").contents == ["discriminator"]
    with pytest.raises(PretrainedError, match="discriminator .D. file.*--pretrained-d"):
        load_pretrained_generator(Synthesizer(cfg), tmp_path / "D.pth", cfg)
    with pytest.raises(PretrainedError, match="generator-only rvc-train file.*--pretrained-g"):
        load_pretrained_discriminator(MultiPeriodDiscriminator(cfg), tmp_path / "G.pth", cfg)
    load_pretrained_discriminator(MultiPeriodDiscriminator(cfg), tmp_path / "D.pth", cfg)


def test_v1_discriminator_misses_the_v2_periods(tiny, tmp_path):
    cfg, _, _ = tiny
    v1 = load_config("tiny")
    v1.model.disc_periods = [2, 3, 5, 7, 11, 17]
    torch.save({"model": MultiPeriodDiscriminator(v1).state_dict()}, tmp_path / "D_v1.pth")
    assert read_model_file(tmp_path / "D_v1.pth").version == "v1"
    with pytest.raises(PretrainedError, match=r"keys missing from the file: \d+, e\.g\. discriminators\.7\."):
        load_pretrained_discriminator(MultiPeriodDiscriminator(cfg), tmp_path / "D_v1.pth", cfg)


def test_no_pitch_model_is_refused(tiny, tmp_path):
    cfg, net_g, _ = tiny
    state = {k: v for k, v in net_g.state_dict().items() if k != "enc_p.emb_pitch.weight"}
    torch.save({"model": state}, tmp_path / "G40k.pth")
    assert read_model_file(tmp_path / "G40k.pth").f0 == 0
    with pytest.raises(PretrainedError, match="without pitch guidance.*f0G40k.pth"):
        load_pretrained_generator(net_g, tmp_path / "G40k.pth", cfg)


class Custom:
    """A class a pickle would need code for."""

    def __init__(self):
        self.value = 1


def test_pickle_that_needs_code_is_refused(tmp_path):
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Custom()}, tmp_path / "evil.pth")
    with pytest.raises(PretrainedError) as info:
        read_model_file(tmp_path / "evil.pth")
    message = str(info.value)
    assert "needs code to load" in message and "Custom" in message
    assert "can run any code" in message and "torch.save" in message


def test_garbage_truncated_and_missing_files(tmp_path):
    torch.save({"model": {"w": torch.zeros(1000)}}, tmp_path / "whole.pth")
    whole = (tmp_path / "whole.pth").read_bytes()
    for content in (b"definitely not a model", b"\x80\x02garbage", whole[: len(whole) // 2]):
        (tmp_path / "bad.pth").write_bytes(content)
        with pytest.raises(PretrainedError, match="damaged or not a model file"):
            read_model_file(tmp_path / "bad.pth")
    with pytest.raises(PretrainedError, match="does not exist"):
        read_model_file(tmp_path / "missing.pth")


def test_plain_data_that_is_no_model(tmp_path):
    torch.save({"hello": 1}, tmp_path / "dict.pth")
    with pytest.raises(PretrainedError, match=r"keys \[hello\], none of the model formats"):
        read_model_file(tmp_path / "dict.pth")
    torch.save({"model": {"w": "not a tensor"}}, tmp_path / "broken.pth")
    with pytest.raises(PretrainedError, match="not a state dict of tensors"):
        read_model_file(tmp_path / "broken.pth")


@pytest.mark.parametrize("name", ["v2-32k", "v2-40k", "v2-48k", "v1-32k", "v1-40k", "v1-48k"])
def test_rvc_presets_export_rvc_files_and_are_recognised_from_their_weights(name):
    """Every RVC preset (v1 too) gets an RVC .pth on export, and a bare generator state dict of its shapes
    is recognised as that preset (RVC v1 32k/48k have their own upsampling, not v2's)."""
    from arvc.modelfile.export import is_rvc_sized
    from arvc.modelfile.read import _match_preset

    cfg = load_config(name)
    assert is_rvc_sized(cfg)
    with torch.device("meta"):
        state = Synthesizer(cfg).state_dict()
    matched = _match_preset(state)
    assert matched is not None and matched.name == name and matched.version == name[:2]
    assert not is_rvc_sized(load_config("tiny"))
