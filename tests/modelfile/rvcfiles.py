"""Small model files in RVC's formats for the model-file tests (merge, ONNX export): helpers, not tests."""

from __future__ import annotations

import dataclasses
import hashlib
import zlib

import torch
from typer.testing import CliRunner

from arvc.cli import app
from arvc.config import RunConfig, load_config, rvc_config_list
from arvc.model import Synthesizer


def small_rvc_config(**changes) -> RunConfig:
    """A tiny generator in an RVC preset's shape (v2, 768-d, 32 kHz), so an RVC .pth is written for it."""
    cfg = load_config("tiny")
    cfg.name = "v2-32k"
    d = cfg.data
    d.sampling_rate, d.hop_length, d.filter_length, d.win_length, d.feature_dim = 32000, 320, 1024, 1024, 768
    cfg.model.upsample_rates, cfg.model.upsample_kernel_sizes = [10, 8, 2, 2], [20, 16, 4, 4]
    for key, value in changes.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def rvc_file(path, cfg: RunConfig, seed: int, f0: int = 1, sr: str = "32k", version: str = "v2") -> dict:
    """An RVC inference .pth as RVC's ckpt processing writes it (fp16, no enc_q); returns its weights."""
    torch.manual_seed(seed)
    net = Synthesizer(cfg, f0=bool(f0))  # f0=0: RVC's nono layout (no pitch embedding, no NSF source)
    weights = {k: v.half() for k, v in net.state_dict().items() if not k.startswith("enc_q.")}
    values = rvc_config_list(cfg)
    values[-1] = {"32k": 32000, "40k": 40000, "48k": 48000}[sr]
    torch.save(
        {"weight": weights, "config": values, "sr": sr, "f0": f0, "version": version, "info": ""}, path
    )
    return weights


def patterned_weights(cfg: RunConfig, seed: int, f0: bool = True) -> dict[str, torch.Tensor]:
    """A generator's inference weights (no enc_q) in fp16 from integer arithmetic alone, no RNG: the same
    bits on every machine and torch version, so a fixture recorded from RVC's code stays valid. Each value
    is k * 2**-(11 + e) with |k| <= 2047 and e in 0..5 (exact in fp16; the spread of exponents makes a
    merge in another precision or order give other bits)."""
    with torch.device("meta"):
        net = Synthesizer(cfg, f0=f0)
    shapes = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("enc_q.")}
    weights = {}
    for key, shape in shapes.items():
        index = torch.arange(shape.numel(), dtype=torch.int64)
        k = (index * 40503 + seed * 7919 + zlib.crc32(key.encode())) % 4095 - 2047
        e = (index * 7 + seed) % 6
        value = k.to(torch.float64) * torch.pow(2.0, -(11 + e).to(torch.float64))
        weights[key] = value.to(torch.float16).reshape(shape)
    return weights


def patterned_rvc_file(
    path, cfg: RunConfig, seed: int, sr: str = "32k", version: str = "v2", f0: int = 1
) -> dict:
    """An RVC inference .pth (as RVC's ckpt processing writes it) of :func:`patterned_weights`."""
    weights = patterned_weights(cfg, seed, f0=bool(f0))
    values = rvc_config_list(cfg)
    values[-1] = {"32k": 32000, "40k": 40000, "48k": 48000}[sr]
    fields = {"config": values, "sr": sr, "f0": f0, "version": version, "info": ""}
    torch.save({"weight": weights, **fields}, path)
    return weights


def merge_case_config(case: dict, spk: int) -> RunConfig:
    """The small RVC-shaped configuration of one model of a case in fixtures/rvc_merge.json."""
    cfg = small_rvc_config(model__spk_embed_dim=spk, data__feature_dim=case["feature_dim"])
    cfg.version = case["version"]
    return cfg


def tensor_digest(tensor: torch.Tensor) -> str:
    """``dtype [shape] sha256`` (of the bytes, first 32 hex digits): one merged tensor in rvc_merge.json."""
    data = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    dtype = str(tensor.dtype).removeprefix("torch.")
    return f"{dtype} {list(tensor.shape)} {hashlib.sha256(data).hexdigest()[:32]}"


def reduced_width(cfg: RunConfig) -> RunConfig:
    """A config family's architecture with fewer channels: version, feature width, sample rate, hop,
    upsample rates and kernels, resblocks, heads and speaker count kept (the same graph of operations)."""
    model = dataclasses.replace(
        cfg.model,
        inter_channels=16,
        hidden_channels=16,
        filter_channels=32,
        n_layers=2,
        upsample_initial_channel=64,
        gin_channels=16,
    )
    return dataclasses.replace(cfg, model=model)


def key_digest(keys: list[tuple[str, list[int]]]) -> str:
    """``N keys sha256`` of a state dict's (key, shape) list in order (rvc_nono.json's layouts)."""
    text = "\n".join(f"{k} {list(shape)}" for k, shape in keys)
    return f"{len(keys)} keys {hashlib.sha256(text.encode()).hexdigest()}"


def cli_fails(args, *texts) -> str:
    """`arvc ARGS` ends with an `error:` line (exit status 1) that says each of `texts`; its output flat."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    flat = " ".join(result.output.split())
    assert "error:" in flat
    for text in texts:
        assert text in flat, flat
    return flat
