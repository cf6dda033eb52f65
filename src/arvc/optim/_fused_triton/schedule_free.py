"""Schedule-free AdamW / RAdam in Triton: _fused_cpu/schedule_free.h operation for operation (float32)."""

from __future__ import annotations

import triton
import triton.language as tl

from arvc.optim._fused_args import (
    SCHEDULE_FREE,
    cached_plan,
    check_schedule_free,
    schedule_free_lists,
    schedule_free_table,
)
from arvc.optim._fused_triton.common import (
    Plan,
    block_of,
    launch_blocks,
    load_f32,
    load_grad,
    offsets,
    store_f32,
)

__all__ = ["schedule_free_"]

_WIDTH = tl.constexpr(5)  # numel, param (y), grad, exp_avg_sq, z
_K = offsets(SCHEDULE_FREE)  # the per-step scalars' columns (arvc.optim._fused_args.SCHEDULE_FREE)


@triton.jit
def _update(row, k, scale, offsets, mask, DECAY, MAXIMIZE, HAS_SCALE, MASKED, ALIGNED):
    beta2 = tl.load(k + _K.beta2)
    one_minus_beta2 = tl.load(k + _K.one_minus_beta2)
    bias_correction2 = tl.load(k + _K.bias_correction2)
    eps = tl.load(k + _K.eps)
    weight_decay = tl.load(k + _K.weight_decay)
    ckp1 = tl.load(k + _K.ckp1)
    y_step = tl.load(k + _K.y_step)
    lr = tl.load(k + _K.lr)
    adaptive = tl.load(k + _K.adaptive) != 0.0
    low_weight = tl.load(k + _K.low_weight) != 0.0
    p_address = tl.load(row + 1)
    v_address = tl.load(row + 3)
    z_address = tl.load(row + 4)
    grad = load_grad(tl.load(row + 2), offsets, mask, scale, 0, HAS_SCALE, MAXIMIZE, MASKED, ALIGNED)
    y = load_f32(p_address, offsets, mask, 0, MASKED, ALIGNED)
    z = load_f32(z_address, offsets, mask, 0, MASKED, ALIGNED)
    variance = load_f32(v_address, offsets, mask, 0, MASKED, ALIGNED) * beta2
    variance = variance + one_minus_beta2 * grad * grad
    store_f32(v_address, offsets, mask, variance, 0, MASKED, ALIGNED, False, 0, 0)
    denom = tl.sqrt_rn(tl.div_rn(variance, bias_correction2)) + eps
    step = tl.where(adaptive, tl.div_rn(grad, denom), grad)
    if DECAY:
        step = step + weight_decay * y
    moved = tl.where(low_weight, y + ckp1 * (z - y), z - (z - y) * (1.0 - ckp1))
    store_f32(p_address, offsets, mask, moved + y_step * step, 0, MASKED, ALIGNED, False, 0, 0)
    store_f32(z_address, offsets, mask, z - lr * step, 0, MASKED, ALIGNED, False, 0, 0)


@triton.jit
def _schedule_free_kernel(
    rows,
    scalars,
    blocks,
    scale,
    found_inf,
    DECAY: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    tensor, row, offsets, mask, full = block_of(blocks, rows, _WIDTH, BLOCK)
    k = scalars + tensor * _K.width
    if tl.load(found_inf) == 0.0:  # GradScaler found inf/NaN gradients: the step writes nothing
        if full:
            _update(row, k, scale, offsets, mask, DECAY, MAXIMIZE, HAS_SCALE, False, ALIGNED)
        else:
            _update(row, k, scale, offsets, mask, DECAY, MAXIMIZE, HAS_SCALE, True, ALIGNED)


def _plan(params, grads, exp_avg_sqs, zs) -> Plan:
    """Every check (arvc.optim._fused_args), once per layout; the launches' tables (one per device)."""
    laid_out = check_schedule_free(params, grads, exp_avg_sqs, zs)
    return Plan([(p.device,) for p in params], [params, laid_out, exp_avg_sqs, zs], grads)


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
    grad_scale=None,
    found_inf=None,
) -> None:
    """arvc.optim._fused_cpu_steps.schedule_free_ on the tensors' device; `grad_scale` divides every
    gradient first and a set `found_inf` makes the kernel write nothing (the optimizers do not take
    GradScaler's scale: their group's step count lives on the host; see arvc.optim.adamw_schedulefree)."""
    lists = schedule_free_lists(params, grads, exp_avg_sqs, zs)
    if lists is None:
        return
    plan = cached_plan(("triton", "schedule_free"), lists, lambda: _plan(*lists))
    scalars = schedule_free_table(
        len(params), lr, beta1, beta2, eps, weight_decay, ckp1, bias_correction2, adaptive
    )
    for _, launch in plan.launches:
        launch.prepare(scalars, grad_scale=grad_scale, found_inf=found_inf)
        launch_blocks(
            _schedule_free_kernel,
            launch,
            DECAY=weight_decay != 0.0,
            MAXIMIZE=bool(maximize),
            HAS_SCALE=grad_scale is not None,
        )
