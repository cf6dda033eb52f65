"""The host side of arvc's fused CPU ops: the rows of arvc.optim._fused_ops.FUSED_OPS with the Triton
package's signatures, each checking its arguments and computing the step's scalar table with
arvc.optim._fused_args (as the Triton ops do), then running the C++ kernel (torch.ops.arvc_fused.<op>,
_fused_cpu/<kernel>.h, loaded by arvc.optim._fused.fused_kernels), which advances the step counters once
its update has run.

The checks are kept while the tensors' layouts stay the same (`cached_plan` without addresses: the C++
kernel is handed the tensors themselves, so a new gradient tensor laid out like the last one keeps the
verdict), so a step pays them once per layout, not once per call.
"""

from __future__ import annotations

import torch

from arvc.optim._fused_args import (
    adabelief_lists,
    adabelief_table,
    any_precision_adamw_lists,
    any_precision_adamw_table,
    cached_plan,
    check_adabelief,
    check_any_precision_adamw,
    check_radam,
    check_schedule_free,
    copied_grads,
    couples_decay,
    low_lerp_weight,
    radam_lists,
    radam_table,
    rounding_keys,
    schedule_free_lists,
    schedule_free_table,
    step_values,
    zero_beta1,
)

__all__ = ["adabelief_", "any_precision_adamw_", "radam_", "schedule_free_"]


class _Checked:
    """The arguments passed their checks; `keep` holds the gradients that had to be laid out like their
    parameters (copies: such a call is checked anew every step, and `grads` are what the kernel gets)."""

    def __init__(self, laid_out: list, grads) -> None:
        self.keep = copied_grads(laid_out, grads)
        self.grads = laid_out if self.keep else None


def _checked_grads(kind: tuple, lists: tuple, check) -> list:
    """The gradients the kernel gets, the arguments in `lists` checked by `check` (once per layout)."""
    plan = cached_plan(("cpu", *kind), lists, lambda: _Checked(check(*lists), lists[1]), addresses=False)
    return plan.grads if plan.keep else list(lists[1])


def adabelief_(
    params,
    grads,
    exp_avgs,
    exp_avg_vars,
    max_exp_avg_vars,
    steps,
    amsgrad: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """AdaBelief / AdaBeliefV2 on CPU tensors (_fused_cpu/adabelief.h)."""
    lists = adabelief_lists(params, grads, exp_avgs, exp_avg_vars, max_exp_avg_vars, steps, amsgrad)
    if lists is None:
        return
    smax = lists[4]
    laid_out = _checked_grads(("adabelief", bool(amsgrad)), lists, lambda *a: check_adabelief(*a, amsgrad))
    scalars = adabelief_table(step_values(steps), lr, beta1, beta2, eps, weight_decay)
    torch.ops.arvc_fused.adabelief_(
        params, laid_out, exp_avgs, exp_avg_vars, smax, steps, scalars, bool(amsgrad), zero_beta1(beta1)
    )


def radam_(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    steps,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    """RAdam on CPU tensors (_fused_cpu/radam.h)."""
    lists = radam_lists(params, grads, exp_avgs, exp_avg_sqs, steps)
    if lists is None:
        return
    laid_out = _checked_grads(("radam",), lists, check_radam)
    scalars = radam_table(step_values(steps), lr, beta1, beta2, eps, weight_decay)
    torch.ops.arvc_fused.radam_(
        params,
        laid_out,
        exp_avgs,
        exp_avg_sqs,
        steps,
        scalars,
        low_lerp_weight(beta1),
        couples_decay(weight_decay, decoupled_weight_decay),
        bool(maximize),
    )


def any_precision_adamw_(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    compensations,
    compensation_of,
    steps,
    param_indices,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    seed: int,
    stochastic_rounding: bool,
) -> None:
    """AnyPrecisionAdamW on CPU tensors (_fused_cpu/any_precision_adamw.h; the Kahan buffers that exist
    as a list plus, per parameter, the index of its own, -1: none)."""
    lists = any_precision_adamw_lists(
        params, grads, exp_avgs, exp_avg_sqs, compensations, compensation_of, steps, param_indices
    )
    if lists is None:
        return
    laid_out = _checked_grads(("any_precision_adamw",), lists, check_any_precision_adamw)
    values = step_values(steps)
    torch.ops.arvc_fused.any_precision_adamw_(
        params,
        laid_out,
        exp_avgs,
        exp_avg_sqs,
        list(compensations),
        list(compensation_of),
        steps,
        any_precision_adamw_table(values, lr, beta1, beta2, eps, weight_decay),
        rounding_keys(seed, param_indices, values),
        low_lerp_weight(beta1),
        bool(stochastic_rounding),
    )


def schedule_free_(
    params,
    grads,
    exp_avg_sqs,
    zs,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    ckp1: float,
    bias_correction2: float,
    adaptive: bool,
    maximize: bool,
) -> None:
    """Schedule-free AdamW / RAdam on CPU tensors (_fused_cpu/schedule_free.h): the group's numbers for
    this step as arvc.optim.adamw_schedulefree computes them for its other bodies."""
    lists = schedule_free_lists(params, grads, exp_avg_sqs, zs)
    if lists is None:
        return
    laid_out = _checked_grads(("schedule_free",), lists, check_schedule_free)
    scalars = schedule_free_table(
        len(params), lr, beta1, beta2, eps, weight_decay, ckp1, bias_correction2, adaptive
    )
    torch.ops.arvc_fused.schedule_free_(
        params, laid_out, exp_avg_sqs, zs, scalars, weight_decay != 0.0, bool(maximize)
    )
