"""AdaBeliefV2: AdaBelief with AMSGrad, meant to run under the InverseSqrt schedule.

AMSGrad divides by the running *maximum* of the belief variance, so the effective step size can only
shrink; an early burst of agreeing gradients cannot produce a huge late step. With a linear warm-up and
inverse-square-root decay (arvc.optim.schedulers.InverseSqrt, paired automatically by the registry) this
is arvc's all-in-one choice for long, stable training. Matches adabelief-pytorch with rectify=False,
weight_decouple=True, amsgrad=True (the reference ignores amsgrad when rectify=True; arvc never rectifies).
"""

from __future__ import annotations

from arvc.optim.adabelief import AdaBelief

__all__ = ["AdaBeliefV2"]


class AdaBeliefV2(AdaBelief):
    """AdaBelief + AMSGrad (running maximum of the belief variance). Same arguments as AdaBelief."""

    amsgrad = True
