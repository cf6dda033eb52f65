"""Schedule-free RAdam: schedule-free AdamW (adamw_schedulefree.py) whose start is RAdam's rectification.

Neither a schedule nor a warm-up length: the learning rate of step t is scaled by RAdam's rectification
term (Liu et al., arXiv:1908.03265), sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
with rho_inf = 2/(1 - beta2) - 1 and rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t), while the variance
of the adaptive step is tractable (rho_t > 4). Before that (the first 4 steps at beta2 = 0.999 or 0.99;
every step when beta2 <= 0.6, where rho_inf <= 4):
* `silent_sgd_phase=True` (the reference's default): lr is 0, so y and z stay put and only the second
  moment is gathered; these steps also weigh nothing in the average x (lr_max**weight_lr_power = 0);
* `silent_sgd_phase=False`: plain SGD steps on the unnormalized gradient, at the full lr.

Semantics are the reference's `RAdamScheduleFree` (`schedulefree` 1.4.1), with the same deliberate
differences as AdamWScheduleFree (see there): everything but the learning-rate factor is shared.
"""

from __future__ import annotations

import torch

from arvc.optim.adamw_schedulefree import ScheduleFreeAdam

__all__ = ["RAdamScheduleFree"]


class RAdamScheduleFree(ScheduleFreeAdam):
    """Schedule-free RAdam: no scheduler and no warm-up (pair it with a constant schedule).

    Args: those of AdamWScheduleFree without `warmup_steps` (the rectification is the warm-up), plus
        silent_sgd_phase: during the steps before the rectification applies, move nothing (True, the
            reference's default) or take plain SGD steps (False).
    """

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        silent_sgd_phase: bool = True,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        fused: bool | None = None,
    ) -> None:
        if not isinstance(silent_sgd_phase, bool):
            raise ValueError(f"Invalid silent_sgd_phase value: {silent_sgd_phase!r}; expected True or False")
        defaults = self._defaults(
            lr,
            betas,
            eps,
            weight_decay,
            r,
            weight_lr_power,
            foreach,
            maximize,
            fused,
            silent_sgd_phase=silent_sgd_phase,
        )
        super().__init__(params, defaults)

    def _lr_factor(self, group: dict, step: int) -> tuple[float, bool]:
        beta2 = group["betas"][1]
        beta2_t = beta2**step
        bias_correction2 = 1 - beta2_t
        rho_inf = 2 / (1 - beta2) - 1  # the length of the approximated SMA, at most
        rho_t = rho_inf - 2 * step * beta2_t / bias_correction2  # ... and at this step
        if rho_t > 4.0:
            rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
            return rect, True
        return float(not group["silent_sgd_phase"]), False
