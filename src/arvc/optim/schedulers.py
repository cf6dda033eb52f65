"""Learning-rate schedules, and the automatic pairing of optimizer → schedule.

arvc steps schedulers once per epoch, as RVC does: `total_epochs` and `warmup` are counted in epochs.
"""

from __future__ import annotations

import logging
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, ExponentialLR, LRScheduler

__all__ = ["InverseSqrt", "SCHEDULERS", "build_scheduler", "paired_scheduler_name"]

logger = logging.getLogger(__name__)

SCHEDULERS = ("auto", "cosine", "inverse_sqrt", "exponential", "constant")

RVC_LR_DECAY = 0.999875  # RVC's ExponentialLR gamma
COSINE_ETA_MIN = 1e-6
INVERSE_SQRT_WARMUP = 10


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
        return min(t / self.warmup, math.sqrt(self.warmup / t))

    def get_lr(self) -> list[float]:
        # last_epoch counts scheduler.step() calls (0 right after construction); t counts from 1.
        t = self.last_epoch + 1
        return [base_lr * self.factor(t) for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def paired_scheduler_name(optimizer: Optimizer) -> str:
    """The schedule "auto" picks: the registry's pairing for the optimizer's class, else RVC's decay."""
    from arvc.optim.registry import spec_for_optimizer

    spec = spec_for_optimizer(optimizer)
    if spec is not None and spec.paired_scheduler is not None:
        return spec.paired_scheduler
    return "exponential"


def build_scheduler(
    optimizer: Optimizer,
    name: str = "auto",
    *,
    total_epochs: int,
    warmup_epochs: int = INVERSE_SQRT_WARMUP,
    eta_min: float = COSINE_ETA_MIN,
    gamma: float = RVC_LR_DECAY,
) -> LRScheduler:
    """Make the per-epoch scheduler `name` for `optimizer`.

    "auto" pairs AdaBelief → cosine (CosineAnnealingLR, T_max=total_epochs, eta_min), AdaBeliefV2 →
    inverse_sqrt (InverseSqrt, warmup_epochs), every other optimizer → exponential (RVC's
    ExponentialLR, gamma 0.999875). An explicit name overrides the pairing.
    """
    if not isinstance(total_epochs, int) or isinstance(total_epochs, bool) or total_epochs < 1:
        raise ValueError(f"Invalid total_epochs: {total_epochs!r}; expected an integer >= 1")
    key = name.lower().replace("-", "_")
    if key not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; valid: {', '.join(SCHEDULERS)}")
    if key == "auto":
        key = paired_scheduler_name(optimizer)
        logger.debug("scheduler 'auto' -> %s for %s", key, type(optimizer).__name__)
    if key == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_epochs, eta_min=eta_min)
    if key == "inverse_sqrt":
        return InverseSqrt(optimizer, warmup=warmup_epochs)
    if key == "exponential":
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"Invalid gamma: {gamma}; expected 0 < gamma <= 1")
        return ExponentialLR(optimizer, gamma=gamma)
    return ConstantLR(optimizer, factor=1.0, total_iters=0)
