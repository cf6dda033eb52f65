"""The optimizers of a run: hyperparameters resolved once (and kept on resume), built from the registry.

`hyperparameters` decides the settings stored in every checkpoint; `restore_optimizer` loads a saved state
only into the optimizer that wrote it. A ZeRO-sharded optimizer saves and loads the same layout
(`distributed.Ranks.zero`), so these work for it unchanged.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from arvc.config import RunConfig
from arvc.optim import build_optimizer, get_spec
from arvc.train.errors import TrainError

__all__ = ["DEFAULT_LR", "hyperparameters", "make_optimizer", "restore_optimizer"]

logger = logging.getLogger(__name__)

DEFAULT_LR = 1e-3  # the guide's start; see docs/training.md for the measurement behind it


def hyperparameters(opts, cfg: RunConfig, saved: dict | None) -> dict[str, Any]:
    """The optimizer settings of this run, resolved once and stored in every checkpoint.

    On resume (`saved` = the checkpoint's record) every setting not given explicitly is the run's own;
    asking for another optimizer starts that optimizer fresh from its defaults.
    """
    name = get_spec(opts.optimizer or (saved["name"] if saved else "AdamW")).name
    previous = saved["hyperparameters"] if saved and saved["name"] == name else None
    if previous is not None:
        hp = {**previous, "betas": tuple(previous["betas"]), "kwargs": dict(previous["kwargs"])}
        explicit = {
            "lr": opts.lr,
            "betas": None if opts.betas is None else tuple(opts.betas),
            "eps": opts.eps,
            "weight_decay": opts.weight_decay,
            "use_8bit": opts.use_8bit,
            "kwargs": opts.optimizer_kwargs,
        }
        changed = {k: v for k, v in explicit.items() if v is not None and _plain(v) != _plain(hp[k])}
        if changed:
            detail = ", ".join(f"{k}: {hp[k]!r} -> {v!r}" for k, v in changed.items())
            raise TrainError(
                f"Resuming keeps the run's {name} hyperparameters, but these differ ({detail}). "
                "Drop those flags to resume as the run was, or start a new run."
            )
        return hp
    kwargs = dict(opts.optimizer_kwargs or {})
    if opts.precision == "bf16" and name == "AnyPrecisionAdamW" and not opts.use_8bit:
        # The "brain" mode: bf16 weights, bf16 moments, Kahan-compensated updates.
        for key, value in (
            ("use_kahan_summation", True),
            ("momentum_dtype", "bfloat16"),
            ("variance_dtype", "bfloat16"),
        ):
            kwargs.setdefault(key, value)
    return {
        "optimizer": name,
        "lr": next(lr for lr in (opts.lr, cfg.train.learning_rate, DEFAULT_LR) if lr is not None),
        "betas": tuple(opts.betas if opts.betas is not None else cfg.train.betas),
        "eps": opts.eps if opts.eps is not None else cfg.train.eps,
        "weight_decay": opts.weight_decay,
        "use_8bit": bool(opts.use_8bit),
        "kwargs": kwargs,
    }


def make_optimizer(params, hp: dict[str, Any]) -> torch.optim.Optimizer:
    return build_optimizer(
        hp["optimizer"],
        params,
        lr=hp["lr"],
        betas=hp["betas"],
        eps=hp["eps"],
        weight_decay=hp["weight_decay"],
        use_8bit=hp["use_8bit"],
        **hp["kwargs"],
    )


def restore_optimizer(name: str, optimizer, scheduler, saved: dict, hp: dict, epochs_done: int) -> None:
    """Load a saved optimizer state only if the same optimizer wrote it; never mismatched state."""
    saved_hp = saved["hyperparameters"]
    if saved["name"] != hp["optimizer"] or saved_hp.get("use_8bit") != hp["use_8bit"]:
        logger.warning(
            "%s: checkpoint was trained with %s%s, this run uses %s%s — starting a fresh %s state "
            "(the old optimizer state is not loaded)",
            name,
            saved["name"],
            " (8-bit)" * bool(saved_hp.get("use_8bit")),
            hp["optimizer"],
            " (8-bit)" * bool(hp["use_8bit"]),
            name,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stepping the schedule forward without optimizer steps
            for _ in range(epochs_done):
                scheduler.step()
        return
    optimizer.load_state_dict(saved["state"])
    scheduler.load_state_dict(saved["scheduler"])


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
