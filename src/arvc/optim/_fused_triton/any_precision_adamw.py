"""AnyPrecisionAdamW in Triton: _fused_cpu/any_precision_adamw.h operation for operation — float32,
bfloat16 or float16 parameters and moments, Kahan compensation, stochastic rounding with the CPU kernel's
hash — one launch per (device, storage dtypes) group."""

from __future__ import annotations

import triton
import triton.language as tl

from arvc.optim._fused_args import (
    ANY_PRECISION_ADAMW,
    any_precision_adamw_lists,
    any_precision_adamw_table,
    cached_plan,
    check_any_precision_adamw,
    commit_steps,
    low_lerp_weight,
    rounding_keys,
    step_values,
)
from arvc.optim._fused_triton.common import (
    KINDS,
    Plan,
    Skipped,
    bf16_nearest,
    block_of,
    launch_blocks,
    load_f32,
    load_grad,
    mix32,
    offsets,
    store_f32,
)

__all__ = ["any_precision_adamw_"]

_WIDTH = tl.constexpr(6)  # numel, param, grad, exp_avg, exp_avg_sq, compensation (0: none)
_K = offsets(ANY_PRECISION_ADAMW)  # the per-step scalars' columns (arvc.optim._fused_args)


@triton.jit
def _rounded(value, KIND: tl.constexpr):
    """The float32 value of `value` once stored in KIND to nearest (what the parameter now holds)."""
    if KIND == 0:
        return value
    elif KIND == 1:
        return (bf16_nearest(value) << 16).to(tl.float32, bitcast=True)
    else:
        return value.to(tl.float16).to(tl.float32)


@triton.jit
def _update(
    row,
    k,
    scale,
    key,
    offsets,
    mask,
    P_KIND,
    G_KIND,
    M_KIND,
    V_KIND,
    C_KIND,
    LOW_WEIGHT,
    STOCHASTIC,
    HAS_SCALE,
    MASKED,
    ALIGNED,
):
    decay = tl.load(k + _K.decay)
    w = tl.load(k + _K.lerp_weight)
    beta2 = tl.load(k + _K.beta2)
    one_minus_beta2 = tl.load(k + _K.one_minus_beta2)
    eps = tl.load(k + _K.eps)
    bias_correction2_sqrt = tl.load(k + _K.bias_correction2_sqrt)
    step_size = tl.load(k + _K.step_size)
    p_address = tl.load(row + 1)
    m_address = tl.load(row + 3)
    v_address = tl.load(row + 4)
    grad = load_grad(tl.load(row + 2), offsets, mask, scale, G_KIND, HAS_SCALE, False, MASKED, ALIGNED)
    m_old = load_f32(m_address, offsets, mask, M_KIND, MASKED, ALIGNED)
    if LOW_WEIGHT:
        momentum = m_old + w * (grad - m_old)
    else:
        momentum = grad - (grad - m_old) * (1.0 - w)
    variance = load_f32(v_address, offsets, mask, V_KIND, MASKED, ALIGNED) * beta2
    variance = variance + one_minus_beta2 * grad * grad
    if STOCHASTIC:
        bits = mix32(offsets.to(tl.uint32) ^ tl.load(key).to(tl.uint32))
    else:
        bits = offsets.to(tl.uint32) * 0
    store_f32(m_address, offsets, mask, momentum, M_KIND, MASKED, ALIGNED, STOCHASTIC, bits, 0)
    store_f32(v_address, offsets, mask, variance, V_KIND, MASKED, ALIGNED, STOCHASTIC, bits, 1)
    denom = tl.div_rn(tl.sqrt_rn(variance), bias_correction2_sqrt) + eps
    master = load_f32(p_address, offsets, mask, P_KIND, MASKED, ALIGNED)
    if C_KIND >= 0:
        c_address = tl.load(row + 5)
        master = master + load_f32(c_address, offsets, mask, C_KIND, MASKED, ALIGNED)
    master = master * decay
    master = master + step_size * tl.div_rn(momentum, denom)
    store_f32(p_address, offsets, mask, master, P_KIND, MASKED, ALIGNED, False, bits, 0)
    if C_KIND >= 0:
        # What rounding the parameter dropped is carried into the next step.
        residual = master - _rounded(master, P_KIND)
        store_f32(c_address, offsets, mask, residual, C_KIND, MASKED, ALIGNED, False, bits, 0)


@triton.jit
def _any_precision_adamw_kernel(
    rows,
    scalars,
    blocks,
    scale,
    found_inf,
    keys,
    P_KIND: tl.constexpr,
    G_KIND: tl.constexpr,
    M_KIND: tl.constexpr,
    V_KIND: tl.constexpr,
    C_KIND: tl.constexpr,
    LOW_WEIGHT: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    tensor, row, offsets, mask, full = block_of(blocks, rows, _WIDTH, BLOCK)
    k = scalars + tensor * _K.width
    if tl.load(found_inf) == 0.0:  # GradScaler found inf/NaN gradients: the step writes nothing
        if full:
            _update(
                row,
                k,
                scale,
                keys + tensor,
                offsets,
                mask,
                P_KIND,
                G_KIND,
                M_KIND,
                V_KIND,
                C_KIND,
                LOW_WEIGHT,
                STOCHASTIC,
                HAS_SCALE,
                False,
                ALIGNED,
            )
        else:
            _update(
                row,
                k,
                scale,
                keys + tensor,
                offsets,
                mask,
                P_KIND,
                G_KIND,
                M_KIND,
                V_KIND,
                C_KIND,
                LOW_WEIGHT,
                STOCHASTIC,
                HAS_SCALE,
                True,
                ALIGNED,
            )


def _plan(params, grads, exp_avgs, exp_avg_sqs, kahan, steps) -> Plan:
    """Every check (arvc.optim._fused_args), once per layout; the launches' tables (one per device and
    storage dtypes)."""
    laid_out = check_any_precision_adamw(params, grads, exp_avgs, exp_avg_sqs, kahan, steps)
    group_keys = [
        (
            p.device,
            KINDS[p.dtype],
            KINDS[g.dtype],
            KINDS[m.dtype],
            KINDS[v.dtype],
            KINDS[c.dtype] if c is not None else -1,
        )
        for p, g, m, v, c in zip(params, laid_out, exp_avgs, exp_avg_sqs, kahan, strict=True)
    ]
    return Plan(group_keys, [params, laid_out, exp_avgs, exp_avg_sqs, kahan], grads)


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
    grad_scale=None,
    found_inf=None,
) -> None:
    """arvc.optim._fused_cpu_steps.any_precision_adamw_ on the tensors' device (the Kahan buffers that
    exist as a list plus, per parameter, the index of its own, -1: none); `grad_scale` divides every
    gradient first and a set `found_inf` skips the step (GradScaler's, as device tensors read by the
    kernel)."""
    lists = any_precision_adamw_lists(
        params, grads, exp_avgs, exp_avg_sqs, compensations, compensation_of, steps, param_indices
    )
    if lists is None:
        return
    plan = cached_plan(("triton", "any_precision_adamw"), lists, lambda: _plan(*lists))
    values = step_values(steps)
    scalars = any_precision_adamw_table(values, lr, beta1, beta2, eps, weight_decay)
    keys = rounding_keys(seed, param_indices, values)
    skipped = Skipped(found_inf)
    low_weight = low_lerp_weight(beta1)
    for (_, p_kind, g_kind, m_kind, v_kind, c_kind), launch in plan.launches:
        launch.prepare(scalars, (keys,), grad_scale=grad_scale, found_inf=found_inf)
        launch_blocks(
            _any_precision_adamw_kernel,
            launch,
            P_KIND=p_kind,
            G_KIND=g_kind,
            M_KIND=m_kind,
            V_KIND=v_kind,
            C_KIND=c_kind,
            LOW_WEIGHT=low_weight,
            STOCHASTIC=bool(stochastic_rounding),
            HAS_SCALE=grad_scale is not None,
        )
        if not skipped:
            commit_steps([steps[i] for i in launch.members])
