"""The optimizers of a run: hyperparameters resolved once (and kept on resume), built from the registry.

`Hyperparameters` is the run's optimizer settings, typed and frozen; its `record()` is what every
checkpoint stores (the format of arvc's first checkpoints) and `Hyperparameters.saved(...)` reads one back;
`same_as(saved)` is the one test of "the optimizer that wrote that checkpoint" (its state loads, its
schedule continues). `hyperparameters` decides the settings of a run; `restore_optimizer` loads a saved state
only into the optimizer that wrote it; `plan_schedule` decides the run's lr schedule (a pure function of
the epoch, recorded in every checkpoint and re-planned explicitly when a resume changes the run length).
A ZeRO-sharded optimizer saves and loads the same layout (`distributed.Ranks.zero`), so these work for it
unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from arvc.config import RunConfig
from arvc.optim import build_optimizer, get_spec
from arvc.optim.registry import state_bytes_after_one_step
from arvc.optim.schedulers import (
    INVERSE_SQRT_WARMUP,
    Schedule,
    default_warmup_epochs,
    paired_schedule,
    unpaired_schedule_free,
)
from arvc.train.errors import TrainError

__all__ = [
    "DEFAULT_LR",
    "DEFAULT_OPTIMIZER",
    "Hyperparameters",
    "bf16_weights",
    "hyperparameters",
    "build_from_hyperparameters",
    "optimizer_seed",
    "plan_schedule",
    "restore_optimizer",
    "build_for_role",
]

logger = logging.getLogger(__name__)

DEFAULT_LR = 1e-3  # the guide's start; see docs/training.md for the measurement behind it
DEFAULT_OPTIMIZER = "AdamW"  # a new run that names none


@dataclass(frozen=True)
class Hyperparameters:
    """The settings a run's two optimizers are built with (`build_from_hyperparameters`), resolved once by
    `hyperparameters` and stored in every checkpoint (`record`)."""

    optimizer: str  # the registry name
    lr: float  # the base lr; every epoch's lr comes from the run's schedule
    betas: tuple[float, float]
    eps: float
    weight_decay: float | None  # None: the class default (checkpoints of older arvc versions)
    use_8bit: bool = False  # bitsandbytes' AdamW8bit, whatever `optimizer` is
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # the optimizer class's own keyword arguments

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "use_8bit", bool(self.use_8bit))
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores as the optimizer's "hyperparameters" (plain data, as it always was)."""
        return {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "use_8bit": self.use_8bit,
            "kwargs": dict(self.kwargs),
        }

    @classmethod
    def saved(cls, optim_record: dict) -> Hyperparameters:
        """The settings a checkpoint's optimizer record (its optim_g/optim_d) was written with."""
        hp = optim_record["hyperparameters"]
        return cls(
            optimizer=optim_record["name"],
            lr=hp["lr"],
            betas=hp["betas"],
            eps=hp["eps"],
            weight_decay=hp["weight_decay"],
            use_8bit=bool(hp.get("use_8bit")),
            kwargs=hp.get("kwargs") or {},
        )

    def same_as(self, saved: Hyperparameters) -> bool:
        """Whether `saved` (a checkpoint's) is this optimizer: the same registry name and 8-bit switch, so
        its state loads into this one and its lr schedule continues (other values may differ: --lr)."""
        return self.optimizer == saved.optimizer and self.use_8bit == saved.use_8bit


def hyperparameters(opts, cfg: RunConfig, saved: dict | None, notes: list | None = None) -> Hyperparameters:
    """The optimizer settings of this run, resolved once and stored in every checkpoint.

    On resume (`saved` = the checkpoint's record) every setting not given explicitly is the run's own;
    asking for another optimizer starts that optimizer fresh from its defaults. The values are logged
    (INFO), or with `notes` given, appended to it as (logger name, level, message) for the run to log when
    it starts (`arvc.train.settings.RunSettings.notes`).
    """
    name = get_spec(opts.optimizer or (saved["name"] if saved else DEFAULT_OPTIMIZER)).name
    if saved and saved["name"] == name:
        hp = Hyperparameters.saved(saved)
        recorded = hp.record()
        explicit = {
            "lr": opts.lr,
            "betas": None if opts.betas is None else tuple(opts.betas),
            "eps": opts.eps,
            "weight_decay": opts.weight_decay,
            "use_8bit": opts.use_8bit,
            "kwargs": opts.optimizer_kwargs,
        }
        changed = {k: v for k, v in explicit.items() if v is not None and _plain(v) != _plain(recorded[k])}
        if "lr" in changed:  # a diverged run continues with a lower lr (the schedule scales from it)
            hp = replace(hp, lr=changed.pop("lr"))
        if changed:
            detail = ", ".join(f"{k}: {recorded[k]!r} -> {v!r}" for k, v in changed.items())
            raise TrainError(
                f"Resuming keeps the run's {name} hyperparameters, but these differ ({detail}). "
                "Drop those flags to resume as the run was (only --lr may change on resume), or start a "
                "new run with --name."
            )
        # an old checkpoint's values (e.g. Adam's eps for AdaBelief) stay
        _log_resolved(notes, hp, resumed=True)
        return hp
    spec = get_spec(name)
    kwargs = dict(opts.optimizer_kwargs or {})
    if opts.precision == "bf16" and spec.bf16_weights_kwargs is not None and not opts.use_8bit:
        for key, value in spec.bf16_weights_kwargs.items():  # e.g. AnyPrecisionAdamW: bf16 + Kahan
            kwargs.setdefault(key, value)
    hp = Hyperparameters(
        optimizer=name,
        lr=next(lr for lr in (opts.lr, cfg.train.learning_rate, DEFAULT_LR) if lr is not None),
        **spec.run_hyperparameters(
            config_betas=cfg.train.betas,
            config_eps=cfg.train.eps,
            config_weight_decay=cfg.train.weight_decay,
            betas=None if opts.betas is None else tuple(opts.betas),
            eps=opts.eps,
            weight_decay=opts.weight_decay,
            use_8bit=bool(opts.use_8bit),
        ),
        use_8bit=bool(opts.use_8bit),
        kwargs=kwargs,
    )
    _log_resolved(notes, hp, spec if opts.eps is None and not opts.use_8bit else None, cfg.train.eps)
    return hp


def _log_resolved(
    notes: list | None, hp: Hyperparameters, converted_by=None, config_eps: float | None = None, resumed=False
) -> None:
    """One INFO line: the values the optimizers are built with (and where eps came from)."""
    eps_note = ""
    if converted_by is not None and converted_by.eps_from_adam is not None:
        eps_note = f" (the config's Adam eps {config_eps:g}, converted for {hp.optimizer}: eps_adam**2)"
    weight_decay = "class default" if hp.weight_decay is None else f"{hp.weight_decay:g}"
    message = (
        f"optimizer {hp.optimizer}{' (as bitsandbytes AdamW8bit)' if hp.use_8bit else ''}"
        f"{' as recorded in the checkpoint' if resumed else ''}: lr={hp.lr:g}, "
        f"betas=({hp.betas[0]:g}, {hp.betas[1]:g}), eps={hp.eps:g}{eps_note}, weight_decay={weight_decay}"
        f"{f', {dict(hp.kwargs)}' if hp.kwargs else ''}"
    )
    if notes is None:
        logger.info("%s", message)
    else:
        notes.append((logger.name, logging.INFO, message))


def bf16_weights(precision: str, hp: Hyperparameters) -> bool:
    """Whether this run keeps the model weights themselves in bf16: a bf16 run whose optimizer has a
    bf16-weights mode in the registry (AnyPrecisionAdamW: bf16 weights + Kahan), not under --use-8bit.
    (Only `hp.optimizer` and `hp.use_8bit` are read: a compare `Variant` answers too.)"""
    return precision == "bf16" and not hp.use_8bit and get_spec(hp.optimizer).bf16_weights_kwargs is not None


_ROLES = {"generator": 1, "discriminator": 2}


def optimizer_seed(run_seed: int, role: str) -> int:
    """The stochastic-rounding seed of a run's optimizer: from the run's seed, distinct for G and D."""
    words = np.random.SeedSequence([int(run_seed) & (2**64 - 1), _ROLES[role]]).generate_state(2)
    return (int(words[0]) << 31) ^ int(words[1])  # 63 bits, non-negative


def build_from_hyperparameters(
    params, hp: Hyperparameters, seed: int | None = None, param_indices=None
) -> torch.optim.Optimizer:
    """Build the run's optimizer from `hp`. `seed` seeds stochastic rounding and `param_indices` numbers the
    parameters for it (a ZeRO shard: their global positions), for classes that take them."""
    extra = {}
    if not hp.use_8bit:
        accepted = get_spec(hp.optimizer).supported_kwargs
        if seed is not None and "seed" in accepted and "seed" not in hp.kwargs:
            extra["seed"] = seed
        if param_indices is not None and "param_indices" in accepted:
            extra["param_indices"] = param_indices
    return build_optimizer(
        hp.optimizer,
        params,
        lr=hp.lr,
        betas=hp.betas,
        eps=hp.eps,
        weight_decay=hp.weight_decay,
        use_8bit=hp.use_8bit,
        **hp.kwargs,
        **extra,
    )


def run_state_bytes_per_param(hp: Hyperparameters, dtype: torch.dtype, numel: int = 1 << 16) -> float:
    """Bytes of optimizer state per parameter of the run's optimizer as the run builds it (its kwargs, its
    weights' dtype): the real buffers after one step on a dummy parameter, as the registry measures."""
    param = torch.nn.Parameter(torch.zeros(numel, dtype=dtype))
    return state_bytes_after_one_step(build_from_hyperparameters([param], hp, seed=0), param)


def build_for_role(
    params, hp: Hyperparameters, role: str, run_seed: int, ranks=None
) -> torch.optim.Optimizer:
    """The optimizer of `role` ("generator"/"discriminator") of a run; `ranks` (a distributed.Ranks) to
    shard it with ZeRO, each shard numbering its parameters by their place in the whole model."""
    seed = optimizer_seed(run_seed, role)
    if ranks is None:
        return build_from_hyperparameters(params, hp, seed)
    return ranks.zero(
        params, lambda shard, indices: build_from_hyperparameters(shard, hp, seed, indices), hp.lr
    )


def restore_optimizer(name: str, optimizer, saved: dict, hp: Hyperparameters, params=None) -> None:
    """Load a saved optimizer state only if the same optimizer wrote it; never mismatched state.

    A switch away from a schedule-free optimizer continues from the run's model, its averaged weights x
    (what it evaluated and exported), not from y, where it took gradients: the saved optimizer is rebuilt
    over `params` (the module's, holding the checkpoint's y) with its state and put in eval mode.
    The lr is not part of what is restored: the loop sets every epoch's lr from the run's schedule
    (an old checkpoint's "scheduler" state is ignored; the epoch defines the lr)."""
    saved_hp = Hyperparameters.saved(saved)
    if not hp.same_as(saved_hp):
        logger.warning(
            "%s: checkpoint was trained with %s%s, this run uses %s%s — starting a fresh %s state "
            "(the old optimizer state is not loaded)",
            name,
            saved_hp.optimizer,
            " (8-bit)" * saved_hp.use_8bit,
            hp.optimizer,
            " (8-bit)" * hp.use_8bit,
            name,
        )
        if params is not None and get_spec(saved_hp.optimizer).schedule_free and not saved_hp.use_8bit:
            old = build_from_hyperparameters(list(params), saved_hp)
            old.load_state_dict(saved["state"])  # (saved in train mode: the parameters hold y)
            old.eval()
            logger.info(
                "%s: continuing from %s's averaged weights x (the run's model), not y", name, saved["name"]
            )
        return
    optimizer.load_state_dict(saved["state"])


def plan_schedule(cfg: RunConfig, hp: Hyperparameters, checkpoint: dict | None) -> Schedule:
    """The run's lr schedule: a new plan from the config, or on resume the checkpoint's own plan.

    On resume the checkpoint is the truth: its plan continues, scaled to an explicit new --lr, and
    re-planned (logged) when `train.epochs` changed (`Schedule.replanned`: the lr never jumps up). A
    resume that switches optimizer starts the new optimizer's own plan at the run's epoch.
    """
    saved = Hyperparameters.saved(checkpoint["optim_g"]) if checkpoint is not None else None
    if saved is None or not hp.same_as(saved):
        return _new_schedule(cfg, hp)
    if "schedule" in checkpoint:
        schedule = Schedule.from_dict(checkpoint["schedule"])
    else:  # written before plans were recorded: the plan that run followed (its scheduler state is unused)
        old = RunConfig.from_dict(checkpoint["config"])
        warmup = old.train.warmup_epochs or INVERSE_SQRT_WARMUP  # the fixed warm-up of those versions
        schedule = _new_schedule(old, saved, warmup)
    if hp.lr != schedule.base_lr:
        logger.info(
            "resume with --lr %g (was %g), recorded in the next checkpoints: the %s schedule now "
            "scales from it",
            hp.lr,
            schedule.base_lr,
            schedule.name,
        )
        schedule = schedule.with_base_lr(hp.lr)
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


def _new_schedule(cfg: RunConfig, hp: Hyperparameters, warmup: int | None = None) -> Schedule:
    t = cfg.train
    paired = paired_schedule(hp.optimizer, hp.use_8bit)
    name = t.scheduler if t.scheduler != "auto" else paired
    if get_spec(hp.optimizer).schedule_free and not hp.use_8bit and name != paired:
        logger.warning(unpaired_schedule_free(hp.optimizer, name, paired, "train.scheduler"))
    warmup = warmup or t.warmup_epochs or default_warmup_epochs(t.epochs)
    schedule = Schedule(name, hp.lr, t.epochs, warmup, gamma=t.lr_decay)
    if name == "inverse_sqrt" and t.epochs < warmup:
        logger.warning(
            "the run has %d epochs, fewer than its %d-epoch warm-up: the lr never reaches its peak %g "
            "(set train.warmup_epochs to at most %d, or leave it unset for a warm-up that fits)",
            t.epochs, warmup, hp.lr, t.epochs,
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
