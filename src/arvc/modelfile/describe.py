"""What is in a model file, as a plain dict: the answer to "which file is this?" before using it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from arvc.modelfile.read import read_model_file

__all__ = ["describe_model_file"]


def _plain(value: Any) -> Any:
    """JSON-ready copy: tuples become lists, odd objects their repr, NaN/inf stay readable strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def describe_model_file(path: str | Path) -> dict[str, Any]:
    """Format, version, sample rate, f0, parameter count (and training state for arvc checkpoints).

    Raises :class:`arvc.modelfile.read.PretrainedError` for files that are not models.
    """
    mf = read_model_file(path)
    cfg = mf.config
    out: dict[str, Any] = {
        "path": str(mf.path),
        "format": mf.kind,
        "contents": mf.contents,
        "version": mf.version,
        "sample_rate": mf.sample_rate,
        "f0": mf.f0,
        "parameters": mf.n_params,
        "dtype": mf.dtype,
        "config": cfg.name if cfg else None,
        "feature_dim": cfg.data.feature_dim if cfg else None,
    }
    if mf.features:
        out["features"] = mf.features
    if mf.generator is not None:
        out["has_enc_q"] = any(k.startswith("enc_q.") for k in mf.generator)
    if mf.info:
        out["info"] = mf.info
    if mf.kind in ("arvc-checkpoint", "rvc-train"):
        out["epoch"] = mf.epoch
    if mf.kind == "arvc-checkpoint":
        out["step"] = mf.step
        out["optimizer"] = mf.optimizer
        out["precision"] = mf.extra.get("precision")
        if "device" in mf.extra:  # where it was trained (checkpoints of arvc before --device auto: absent)
            name = mf.extra.get("device_name")
            out["device"] = mf.extra["device"] + (f" ({name})" if name else "")
        # The weights the run evaluated and exports (arvc.train.weights), beside the live ones it trains;
        # "none": its live weights are the evaluated ones.
        out["averaged"] = mf.averaged_info or "none"
    if mf.hyperparameters is not None:
        out["hyperparameters"] = mf.hyperparameters
    return _plain(out)
