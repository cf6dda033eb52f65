"""AdaBelief / AdaBeliefV2 in Triton: _fused_cpu/adabelief.h operation for operation, one launch per
(device, parameter dtype, gradient dtype) group."""

from __future__ import annotations

import triton
import triton.language as tl

from arvc.optim._fused_args import (
    ADABELIEF,
    adabelief_lists,
    adabelief_table,
    cached_plan,
    check_adabelief,
    commit_steps,
    step_values,
    zero_beta1,
)
from arvc.optim._fused_triton.common import (
    KINDS,
    Plan,
    Skipped,
    block_of,
    launch_blocks,
    load_f32,
    load_grad,
    offsets,
    store_f32,
)

__all__ = ["adabelief_"]

_WIDTH = tl.constexpr(6)  # numel, param, grad, exp_avg, exp_avg_var, max_exp_avg_var
_K = offsets(ADABELIEF)  # the per-step scalars' columns (arvc.optim._fused_args.ADABELIEF)


@triton.jit
def _update(
    row, scalars, scale, offsets, mask, AMSGRAD, ZERO_BETA1, P_KIND, G_KIND, HAS_SCALE, MASKED, ALIGNED
):
    decay = tl.load(scalars + _K.decay)
    beta1 = tl.load(scalars + _K.beta1)
    one_minus_beta1 = tl.load(scalars + _K.one_minus_beta1)
    beta2 = tl.load(scalars + _K.beta2)
    one_minus_beta2 = tl.load(scalars + _K.one_minus_beta2)
    eps = tl.load(scalars + _K.eps)
    bias_correction2_sqrt = tl.load(scalars + _K.bias_correction2_sqrt)
    step_size = tl.load(scalars + _K.step_size)
    p_address = tl.load(row + 1)
    m_address = tl.load(row + 3)
    s_address = tl.load(row + 4)
    param = load_f32(p_address, offsets, mask, P_KIND, MASKED, ALIGNED) * decay
    grad = load_grad(tl.load(row + 2), offsets, mask, scale, G_KIND, HAS_SCALE, False, MASKED, ALIGNED)
    m_old = load_f32(m_address, offsets, mask, 0, MASKED, ALIGNED)
    if ZERO_BETA1:
        residual = grad - m_old  # against the previous momentum (see adabelief.py)
        momentum = grad
    else:
        momentum = m_old * beta1
        momentum = momentum + one_minus_beta1 * grad
        residual = grad - momentum
    belief = load_f32(s_address, offsets, mask, 0, MASKED, ALIGNED) * beta2
    belief = belief + one_minus_beta2 * residual * residual
    belief = belief + eps
    store_f32(m_address, offsets, mask, momentum, 0, MASKED, ALIGNED, False, 0, 0)
    store_f32(s_address, offsets, mask, belief, 0, MASKED, ALIGNED, False, 0, 0)
    if AMSGRAD:
        smax_address = tl.load(row + 5)
        previous = load_f32(smax_address, offsets, mask, 0, MASKED, ALIGNED)
        # torch.maximum: a NaN on either side wins
        belief = tl.where(previous != previous, previous, tl.where(previous > belief, previous, belief))
        store_f32(smax_address, offsets, mask, belief, 0, MASKED, ALIGNED, False, 0, 0)
    denom = tl.div_rn(tl.sqrt_rn(belief), bias_correction2_sqrt) + eps
    param = param + step_size * tl.div_rn(momentum, denom)
    store_f32(p_address, offsets, mask, param, P_KIND, MASKED, ALIGNED, False, 0, 0)


@triton.jit
def _adabelief_kernel(
    rows,
    scalars,
    blocks,
    scale,
    found_inf,
    AMSGRAD: tl.constexpr,
    ZERO_BETA1: tl.constexpr,
    P_KIND: tl.constexpr,
    G_KIND: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    tensor, row, offsets, mask, full = block_of(blocks, rows, _WIDTH, BLOCK)
    k = scalars + tensor * _K.width
    if tl.load(found_inf) == 0.0:  # GradScaler found inf/NaN gradients: the step writes nothing
        if full:
            _update(
                row, k, scale, offsets, mask, AMSGRAD, ZERO_BETA1, P_KIND, G_KIND, HAS_SCALE, False, ALIGNED
            )
        else:
            _update(
                row, k, scale, offsets, mask, AMSGRAD, ZERO_BETA1, P_KIND, G_KIND, HAS_SCALE, True, ALIGNED
            )


def _plan(params, grads, exp_avgs, exp_avg_vars, max_exp_avg_vars, steps, amsgrad) -> Plan:
    """Every check (arvc.optim._fused_args), once per layout; the launches' tables (one per device,
    parameter and gradient dtype)."""
    laid_out = check_adabelief(params, grads, exp_avgs, exp_avg_vars, max_exp_avg_vars, steps, amsgrad)
    keys = [(p.device, KINDS[p.dtype], KINDS[g.dtype]) for p, g in zip(params, laid_out, strict=True)]
    smax = max_exp_avg_vars if amsgrad else [None] * len(params)
    return Plan(keys, [params, laid_out, exp_avgs, exp_avg_vars, smax], grads)


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
    grad_scale=None,
    found_inf=None,
) -> None:
    """The CPU op's signature and semantics (arvc.optim._fused_cpu_steps.adabelief_), on the tensors' device;
    `grad_scale`: divide every gradient by it first, a set `found_inf`: skip the step (GradScaler's, AMP
    without an unscale pass; device tensors, read by the kernel, not the host)."""
    lists = adabelief_lists(params, grads, exp_avgs, exp_avg_vars, max_exp_avg_vars, steps, amsgrad)
    if lists is None:
        return
    plan = cached_plan(("triton", "adabelief", bool(amsgrad)), lists, lambda: _plan(*lists, amsgrad))
    scalars = adabelief_table(step_values(steps), lr, beta1, beta2, eps, weight_decay)
    skipped = Skipped(found_inf)
    for (_, p_kind, g_kind), launch in plan.launches:
        launch.prepare(scalars, grad_scale=grad_scale, found_inf=found_inf)
        launch_blocks(
            _adabelief_kernel,
            launch,
            AMSGRAD=bool(amsgrad),
            ZERO_BETA1=zero_beta1(beta1),
            P_KIND=p_kind,
            G_KIND=g_kind,
            HAS_SCALE=grad_scale is not None,
        )
        if not skipped:
            commit_steps([steps[i] for i in launch.members])
