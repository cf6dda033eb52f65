"""Small model files in RVC's formats for the model-file tests (merge, ONNX export): helpers, not tests."""

from __future__ import annotations

import torch

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
    weights = {k: v.half() for k, v in Synthesizer(cfg).state_dict().items() if not k.startswith("enc_q.")}
    if not f0:
        del weights["enc_p.emb_pitch.weight"]
    values = rvc_config_list(cfg)
    values[-1] = {"32k": 32000, "40k": 40000, "48k": 48000}[sr]
    torch.save(
        {"weight": weights, "config": values, "sr": sr, "f0": f0, "version": version, "info": ""}, path
    )
    return weights
