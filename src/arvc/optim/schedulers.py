"""Learning-rate schedules, and the automatic pairing of optimizer → schedule.

Every schedule is a pure function of the epoch (`scheduled_lr`, wrapped by the frozen `Schedule` a run
records in its checkpoints): the lr of epoch index e (0 for the first epoch, i.e. the epochs completed
before it) is computed, never accumulated, so a resumed or extended run has no scheduler state to drift.
`build_scheduler` still makes torch LRScheduler objects for code that wants them; they follow the same
formulas (tests/optim/test_schedulers.py checks them against each other).

Counted in epochs, as RVC steps its scheduler once per epoch:

- cosine:       eta_min + (lr_start - eta_min) * (1 + cos(pi * (e - start) / (total - start))) / 2, reaching
                eta_min at e = total (a fresh run: start = 0, lr_start = base_lr, torch's CosineAnnealingLR)
- inverse_sqrt: base_lr * min((e + 1) / warmup, sqrt(warmup / (e + 1)))
- exponential:  base_lr * gamma**e (RVC's ExponentialLR)
- constant:     base_lr
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass, replace

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, ExponentialLR, LRScheduler

__all__ = [
    "InverseSqrt",
    "SCHEDULERS",
    "Schedule",
    "build_scheduler",
    "default_warmup_epochs",
    "paired_schedule",
    "scheduled_lr",
]

logger = logging.getLogger(__name__)

SCHEDULERS = ("auto", "cosine", "inverse_sqrt", "exponential", "constant")

RVC_LR_DECAY = 0.999875  # RVC's ExponentialLR gamma
COSINE_ETA_MIN = 1e-6
INVERSE_SQRT_WARMUP = 10  # the longest default warm-up, and what runs before warmup_epochs existed used


def default_warmup_epochs(total_epochs: int) -> int:
    """The warm-up a run gets when its config leaves `train.warmup_epochs` unset: a tenth of the run,
    at least 1 and at most 10 epochs (10 is the guide's value for long runs), so a short run still
    reaches its peak lr: clamp(total_epochs // 10, 1, 10)."""
    return min(max(total_epochs // 10, 1), INVERSE_SQRT_WARMUP)


def scheduled_lr(
    name: str,
    epoch: int,
    base_lr: float,
    *,
    total_epochs: int,
    warmup_epochs: int | None = None,
    gamma: float = RVC_LR_DECAY,
    eta_min: float = COSINE_ETA_MIN,
    start_epoch: int = 0,
    start_factor: float = 1.0,
) -> float:
    """The lr of epoch index `epoch` (0-based) under schedule `name`: a pure function, no state.

    `start_epoch`/`start_factor` only matter for cosine: the curve starts at lr = base_lr * start_factor
    at epoch index `start_epoch` and reaches eta_min at `total_epochs` (where a re-planned run picks it up;
    see `Schedule.replanned`). Past its end the cosine stays at eta_min instead of climbing back up.
    `warmup_epochs` (inverse_sqrt) defaults to a run's: `default_warmup_epochs(total_epochs)`.
    """
    if epoch < 0:
        raise ValueError(f"Invalid epoch: {epoch}; epochs are counted from 0")
    if name == "cosine":
        start_lr = base_lr * start_factor
        span = total_epochs - start_epoch
        if span <= 0 or epoch >= total_epochs:
            return start_lr if span <= 0 else eta_min
        progress = max(epoch - start_epoch, 0) / span
        return eta_min + (start_lr - eta_min) * (1 + math.cos(math.pi * progress)) / 2
    if name == "inverse_sqrt":
        t = epoch + 1
        warmup = default_warmup_epochs(total_epochs) if warmup_epochs is None else warmup_epochs
        return base_lr * min(t / warmup, math.sqrt(warmup / t))
    if name == "exponential":
        return base_lr * gamma**epoch
    if name == "constant":
        return base_lr
    raise ValueError(f"Unknown schedule {name!r}; valid: {', '.join(SCHEDULERS[1:])}")


@dataclass(frozen=True)
class Schedule:
    """One run's learning-rate plan; `lr(epoch)` is `scheduled_lr` of its fields (stored in checkpoints)."""

    name: str  # resolved: cosine, inverse_sqrt, exponential or constant (never "auto")
    base_lr: float
    total_epochs: int
    warmup_epochs: int
    gamma: float = RVC_LR_DECAY
    eta_min: float = COSINE_ETA_MIN
    start_epoch: int = 0  # cosine only: where the current plan starts (0, or where a resume re-planned it)
    start_factor: float = 1.0  # cosine only: lr there, relative to base_lr

    def __post_init__(self) -> None:
        if self.name not in SCHEDULERS[1:]:
            raise ValueError(f"Unknown schedule {self.name!r}; valid: {', '.join(SCHEDULERS[1:])}")
        for key in ("total_epochs", "warmup_epochs"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Invalid {key}: {value!r}; expected an integer >= 1")
        if self.name == "exponential" and not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"Invalid gamma: {self.gamma}; expected 0 < gamma <= 1")

    def lr(self, epoch: int) -> float:
        return scheduled_lr(
            self.name,
            epoch,
            self.base_lr,
            total_epochs=self.total_epochs,
            warmup_epochs=self.warmup_epochs,
            gamma=self.gamma,
            eta_min=self.eta_min,
            start_epoch=self.start_epoch,
            start_factor=self.start_factor,
        )

    def replanned(self, total_epochs: int, last_epoch: int) -> Schedule:
        """The plan for a run whose length changes to `total_epochs`, with epoch index `last_epoch` the
        last one trained (or in progress) under the old plan.

        Only the cosine depends on the run length: it continues from the lr it reached at `last_epoch`
        and decays from there to eta_min at the new end, so the lr never goes up. The other schedules
        do not depend on the run length and continue unchanged (warm-up included).
        """
        if total_epochs == self.total_epochs:
            return self
        if self.name != "cosine":
            return replace(self, total_epochs=total_epochs)
        reached = self.lr(last_epoch)
        return replace(
            self, total_epochs=total_epochs, start_epoch=last_epoch, start_factor=reached / self.base_lr
        )

    def with_base_lr(self, base_lr: float) -> Schedule:
        """The same plan scaled to another base lr (an explicit --lr on resume); eta_min stays absolute."""
        return replace(self, base_lr=base_lr)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Schedule:
        return cls(**data)


class InverseSqrt(LRScheduler):
    """Linear warm-up to the base lr over `warmup` steps, then decay as lr·sqrt(warmup/t).

    factor(t) = min(t / warmup, sqrt(warmup / t)) for t = 1, 2, …: the first step already trains
    (lr/warmup, not 0), the peak is reached at t = warmup, and the two pieces meet there continuously.
    """

    def __init__(self, optimizer: Optimizer, warmup: int = INVERSE_SQRT_WARMUP, last_epoch: int = -1) -> None:
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 1:
            raise ValueError(f"Invalid warmup: {warmup!r}; expected an integer >= 1")
        self.warmup = warmup
        super().__init__(optimizer, last_epoch)

    def factor(self, t: int) -> float:
        return scheduled_lr("inverse_sqrt", t - 1, 1.0, total_epochs=1, warmup_epochs=self.warmup)

    def get_lr(self) -> list[float]:
        # last_epoch counts scheduler.step() calls (0 right after construction) = the epoch index.
        return [
            scheduled_lr("inverse_sqrt", self.last_epoch, base_lr, total_epochs=1, warmup_epochs=self.warmup)
            for base_lr in self.base_lrs
        ]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def paired_schedule(optimizer: Optimizer | str, use_8bit: bool = False) -> str:
    """The schedule "auto" picks for an optimizer, a registry name or a built one (its class's entry): the
    registry's pairing; RVC's exponential decay for 8-bit optimizers and for optimizers without one."""
    from arvc.optim.registry import get_spec, spec_for_optimizer

    spec = get_spec(optimizer) if isinstance(optimizer, str) else spec_for_optimizer(optimizer)
    if spec is None or spec.paired_scheduler is None or use_8bit:
        return "exponential"
    return spec.paired_scheduler


def _is_schedule_free(optimizer: Optimizer) -> bool:
    from arvc.optim.registry import spec_for_optimizer

    spec = spec_for_optimizer(optimizer)
    return spec is not None and spec.schedule_free


def unpaired_schedule_free(optimizer: str, schedule: str, paired: str, setting: str) -> str:
    """The warning for a schedule-free optimizer given another schedule than its pairing (`setting`: the
    name the user set it by), said by the trainer and by `build_scheduler`."""
    return (
        f"{setting} {schedule} with the schedule-free {optimizer}: it needs no schedule (its averaged "
        f"weights are good whenever training stops) and is paired with {paired}; set {setting} auto (or "
        f"{paired}) unless you mean to compare"
    )


def build_scheduler(
    optimizer: Optimizer,
    name: str = "auto",
    *,
    total_epochs: int,
    warmup_epochs: int | None = None,
    eta_min: float = COSINE_ETA_MIN,
    gamma: float = RVC_LR_DECAY,
) -> LRScheduler:
    """Make the per-epoch scheduler `name` for `optimizer`.

    "auto" pairs AdaBelief → cosine (CosineAnnealingLR, T_max=total_epochs, eta_min), AdaBeliefV2 →
    inverse_sqrt (InverseSqrt, warmup_epochs; by default a run's, clamp(total_epochs // 10, 1, 10)),
    the schedule-free ones → constant (their lr needs no schedule), every other optimizer → exponential
    (RVC's ExponentialLR, gamma 0.999875). An explicit name overrides the pairing; another schedule than
    constant for a schedule-free optimizer warns (a UserWarning).
    """
    if not isinstance(total_epochs, int) or isinstance(total_epochs, bool) or total_epochs < 1:
        raise ValueError(f"Invalid total_epochs: {total_epochs!r}; expected an integer >= 1")
    key = name.lower().replace("-", "_")
    if key not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
    paired = paired_schedule(optimizer)
    if key == "auto":
        key = paired
        logger.debug("scheduler 'auto' -> %s for %s", key, type(optimizer).__name__)
    elif key != paired and _is_schedule_free(optimizer):
        message = unpaired_schedule_free(type(optimizer).__name__, key, paired, "scheduler")
        warnings.warn(message, stacklevel=2)
    if key == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_epochs, eta_min=eta_min)
    if key == "inverse_sqrt":
        if warmup_epochs is None:
            warmup_epochs = default_warmup_epochs(total_epochs)
        return InverseSqrt(optimizer, warmup=warmup_epochs)
    if key == "exponential":
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"Invalid gamma: {gamma}; expected 0 < gamma <= 1")
        return ExponentialLR(optimizer, gamma=gamma)
    return ConstantLR(optimizer, factor=1.0, total_iters=0)
