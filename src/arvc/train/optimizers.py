"""The optimizers of a run: hyperparameters resolved once (and kept on resume), built from the registry.

`hyperparameters` decides the settings stored in every checkpoint; `restore_optimizer` loads a saved state
only into the optimizer that wrote it; `plan_schedule` decides the run's lr schedule (a pure function of
the epoch, recorded in every checkpoint and re-planned explicitly when a resume changes the run length).
A ZeRO-sharded optimizer saves and loads the same layout (`distributed.Ranks.zero`), so these work for it
unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from arvc.config import RunConfig
from arvc.optim import build_optimizer, get_spec
from arvc.optim.schedulers import (
    INVERSE_SQRT_WARMUP,
    Schedule,
    default_warmup_epochs,
    paired_schedule_for,
)
from arvc.train.errors import TrainError

__all__ = ["DEFAULT_LR", "hyperparameters", "make_optimizer", "plan_schedule", "restore_optimizer"]

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
        if "lr" in changed:  # a diverged run continues with a lower lr (the schedule scales from it)
            hp["lr"] = changed.pop("lr")
        if changed:
            detail = ", ".join(f"{k}: {hp[k]!r} -> {v!r}" for k, v in changed.items())
            raise TrainError(
                f"Resuming keeps the run's {name} hyperparameters, but these differ ({detail}). "
                "Drop those flags to resume as the run was (only --lr may change on resume), or start a "
                "new run with --name."
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


def restore_optimizer(name: str, optimizer, saved: dict, hp: dict) -> None:
    """Load a saved optimizer state only if the same optimizer wrote it; never mismatched state.

    The lr is not part of what is restored: the loop sets every epoch's lr from the run's schedule
    (an old checkpoint's "scheduler" state is ignored; the epoch defines the lr)."""
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
        return
    optimizer.load_state_dict(saved["state"])


def plan_schedule(cfg: RunConfig, hp: dict[str, Any], checkpoint: dict | None) -> Schedule:
    """The run's lr schedule: a new plan from the config, or on resume the checkpoint's own plan.

    On resume the checkpoint is the truth: its plan continues, scaled to an explicit new --lr, and
    re-planned (logged) when `train.epochs` changed (`Schedule.replanned`: the lr never jumps up). A
    resume that switches optimizer starts the new optimizer's own plan at the run's epoch.
    """
    saved = checkpoint["optim_g"] if checkpoint is not None else None
    if (
        saved is None
        or saved["name"] != hp["optimizer"]
        or saved["hyperparameters"].get("use_8bit") != hp["use_8bit"]
    ):
        return _new_schedule(cfg, hp)
    if "schedule" in checkpoint:
        schedule = Schedule.from_dict(checkpoint["schedule"])
    else:  # written before plans were recorded: the plan that run followed (its scheduler state is unused)
        old = RunConfig.from_dict(checkpoint["config"])
        warmup = old.train.warmup_epochs or INVERSE_SQRT_WARMUP  # the fixed warm-up of those versions
        schedule = _new_schedule(old, saved["hyperparameters"] | {"optimizer": saved["name"]}, warmup)
    if hp["lr"] != schedule.base_lr:
        logger.info(
            "resume with --lr %g (was %g), recorded in the next checkpoints: the %s schedule now "
            "scales from it",
            hp["lr"],
            schedule.base_lr,
            schedule.name,
        )
        schedule = schedule.with_base_lr(hp["lr"])
    if cfg.train.epochs != schedule.total_epochs:
        epochs_done, in_progress = checkpoint["epoch"], checkpoint.get("batch_in_epoch", 0) > 0
        last = epochs_done if in_progress else max(epochs_done - 1, 0)  # the last epoch given an lr
        was, schedule = schedule.total_epochs, schedule.replanned(cfg.train.epochs, last)
        if schedule.name == "cosine":
            logger.info(
                "resume: %d epochs instead of %d; cosine now ends at epoch %d, decaying from lr %.3g "
                "(epoch %d) to %.3g",
                cfg.train.epochs, was, cfg.train.epochs, schedule.lr(last), last + 1, schedule.eta_min,
            )  # fmt: skip
        else:
            logger.info(
                "resume: %d epochs instead of %d; the %s schedule does not depend on the run length and "
                "continues unchanged",
                cfg.train.epochs, was, schedule.name,
            )  # fmt: skip
    return schedule


def _new_schedule(cfg: RunConfig, hp: dict[str, Any], warmup: int | None = None) -> Schedule:
    t = cfg.train
    name = t.scheduler if t.scheduler != "auto" else paired_schedule_for(hp["optimizer"], hp["use_8bit"])
    warmup = warmup or t.warmup_epochs or default_warmup_epochs(t.epochs)
    schedule = Schedule(name, hp["lr"], t.epochs, warmup, gamma=t.lr_decay)
    if name == "inverse_sqrt" and t.epochs < warmup:
        logger.warning(
            "the run has %d epochs, fewer than its %d-epoch warm-up: the lr never reaches its peak %g "
            "(set train.warmup_epochs to at most %d, or leave it unset for a warm-up that fits)",
            t.epochs, warmup, hp["lr"], t.epochs,
        )  # fmt: skip
    elif name != "inverse_sqrt" and t.warmup_epochs is not None:
        logger.info("train.warmup_epochs is used by inverse_sqrt only; %s has no warm-up", name)
    return schedule


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
