"""Export a trained generator for inference: safetensors + config, and RVC's own inference file.

RVC WebUI / Applio load `{"weight": fp16 state dict without enc_q, "config": [18 values], "sr": "40k",
"f0": 1, "version": "v2", "info": ...}`; for the RVC-sized configs arvc writes exactly that beside the
safetensors file, so the model drops into the tools users already have.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from arvc._files import atomic_file, write_text
from arvc.config import RunConfig, rvc_config_list
from arvc.modelfile.formats import EXPORT_FORMAT

__all__ = ["ExportError", "check_finite", "export_generator", "inference_state_dict", "is_rvc_sized"]

logger = logging.getLogger(__name__)

RVC_SAMPLE_RATES = {32000: "32k", 40000: "40k", 48000: "48k"}


class ExportError(RuntimeError):
    """The model cannot be exported as asked; nothing was written, the message says what to do."""


def non_finite_tensors(weights: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors holding NaN or inf (export and checkpoints refuse such weights)."""
    return [name for name, tensor in weights.items() if not bool(torch.isfinite(tensor).all())]


def name_some(names: list[str], shown: int = 5) -> str:
    """The first `shown` names, and how many more."""
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def check_finite(weights: dict[str, torch.Tensor], out_dir: Path) -> None:
    """A model with NaN/inf weights is no model: refuse it before anything is written."""
    bad = non_finite_tensors(weights)
    if bad:
        listing = name_some(bad)
        raise ExportError(
            f"refusing to export: {len(bad)} of {len(weights)} generator tensors hold non-finite values "
            f"(NaN or inf): {listing}. Training diverged; train again with a lower --lr, or continue from an "
            f"earlier checkpoint with --resume. Nothing was written to {out_dir}."
        )


def inference_state_dict(generator: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The generator's weights without the posterior encoder, which only training uses."""
    return {
        key: value.detach().cpu().contiguous().clone()
        for key, value in generator.state_dict().items()
        if not key.startswith("enc_q.")
    }


def is_rvc_sized(cfg: RunConfig) -> bool:
    """An RVC preset's shape (v2: 768-d, v1: 256-d features at 32/40/48 kHz): RVC's tools can load it, and
    will feed it HuBERT/ContentVec features. By version, not name: a config read from an RVC .pth is
    named rvc-v2-40k."""
    return cfg.data.sampling_rate in RVC_SAMPLE_RATES and (cfg.data.feature_dim, cfg.version) in (
        (768, "v2"),
        (256, "v1"),
    )


def export_generator(
    generator: torch.nn.Module,
    cfg: RunConfig,
    out_dir: Path,
    info: str = "",
    explain: bool = True,
    features: str | None = None,
    extra: dict | None = None,
) -> dict[str, Path]:
    """Write `model.safetensors` + `model.json` (and `model_rvc.pth` for RVC-sized configs) to out_dir.

    Whether the generator has pitch guidance (its ``f0``; False: RVC's "nono" layout, e.g. a merge of f0=0
    models) is recorded as ``"f0": 1/0`` in model.json and the RVC `.pth`, as RVC writes it.
    `features` is what the model was trained on (mel, hubert; None: not known), recorded in both files. A
    model trained on mel features gets no RVC `.pth` whatever its size: RVC's tools would feed it HuBERT
    features. `extra` adds entries to model.json (a merge's sources). `explain=False` skips the info line
    on why no `.pth` was written (for repeated exports of one run)."""
    out_dir = Path(out_dir)
    weights = {k: v.float() for k, v in inference_state_dict(generator).items()}
    f0 = int(getattr(generator, "f0", True))
    check_finite(weights, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}

    safetensors_path = out_dir / "model.safetensors"
    with atomic_file(safetensors_path) as temporary:
        save_file(
            weights,
            str(temporary),
            metadata={
                "format": EXPORT_FORMAT,
                "config": json.dumps(cfg.to_dict()),
                **({"features": features} if features else {}),
                **({"info": info} if info else {}),  # (what `arvc inspect RUN` shows: e.g. which weights)
            },
        )
    written["safetensors"] = safetensors_path

    config_path = out_dir / "model.json"
    meta = {"format": EXPORT_FORMAT, "info": info, "f0": f0, "config": cfg.to_dict()}
    if features:
        meta["features"] = features
    meta.update(extra or {})
    write_text(config_path, json.dumps(meta, indent=2))
    written["config"] = config_path

    if is_rvc_sized(cfg) and features != "mel":
        rvc = {
            "weight": {k: v.half() for k, v in weights.items()},
            "config": rvc_config_list(cfg),
            "sr": RVC_SAMPLE_RATES[cfg.data.sampling_rate],
            "f0": f0,
            "version": cfg.version,
            "info": info,
        }
        rvc_path = out_dir / "model_rvc.pth"
        with atomic_file(rvc_path) as temporary:
            torch.save(rvc, temporary)
        written["rvc"] = rvc_path
    elif explain and is_rvc_sized(cfg):
        logger.info(
            "the model was trained on mel features, not HuBERT/ContentVec: no RVC .pth written (RVC's tools "
            "would feed it HuBERT features); it converts in arvc only (arvc infer --features mel)"
        )
    elif explain:
        logger.info(
            "config %s is not RVC-sized (needs a v2/v1 preset's 32k/40k/48k, 768/256-d): no RVC .pth written",
            cfg.name,
        )
    return written
