"""RAdam in Triton: _fused_cpu/radam.h operation for operation (torch.optim.RAdam's update, float32)."""

from __future__ import annotations

import triton
import triton.language as tl

from arvc.optim._fused_args import (
    RADAM,
    cached_plan,
    check_radam,
    commit_steps,
    couples_decay,
    low_lerp_weight,
    radam_lists,
    radam_table,
    step_values,
)
from arvc.optim._fused_triton.common import (
    Plan,
    Skipped,
    block_of,
    launch_blocks,
    load_f32,
    load_grad,
    offsets,
    store_f32,
)

__all__ = ["radam_"]

_WIDTH = tl.constexpr(5)  # numel, param, grad, exp_avg, exp_avg_sq
_K = offsets(RADAM)  # the per-step scalars' columns (arvc.optim._fused_args.RADAM)


@triton.jit
def _update(row, k, scale, offsets, mask, LOW_WEIGHT, COUPLED_DECAY, MAXIMIZE, HAS_SCALE, MASKED, ALIGNED):
    decay = tl.load(k + _K.decay)
    weight_decay = tl.load(k + _K.weight_decay)
    w = tl.load(k + _K.lerp_weight)
    beta2 = tl.load(k + _K.beta2)
    one_minus_beta2 = tl.load(k + _K.one_minus_beta2)
    eps = tl.load(k + _K.eps)
    bias_correction1 = tl.load(k + _K.bias_correction1)
    lr = tl.load(k + _K.lr)
    bias_correction2_sqrt = tl.load(k + _K.bias_correction2_sqrt)
    rect = tl.load(k + _K.rect)
    rectified = tl.load(k + _K.rectified) != 0.0
    p_address = tl.load(row + 1)
    m_address = tl.load(row + 3)
    v_address = tl.load(row + 4)
    grad = load_grad(tl.load(row + 2), offsets, mask, scale, 0, HAS_SCALE, MAXIMIZE, MASKED, ALIGNED)
    param = load_f32(p_address, offsets, mask, 0, MASKED, ALIGNED)
    if COUPLED_DECAY:
        grad = grad + weight_decay * param
    else:
        param = param * decay
    m_old = load_f32(m_address, offsets, mask, 0, MASKED, ALIGNED)
    if LOW_WEIGHT:
        momentum = m_old + w * (grad - m_old)
    else:
        momentum = grad - (grad - m_old) * (1.0 - w)
    variance = load_f32(v_address, offsets, mask, 0, MASKED, ALIGNED) * beta2
    variance = variance + one_minus_beta2 * grad * grad
    store_f32(m_address, offsets, mask, momentum, 0, MASKED, ALIGNED, False, 0, 0)
    store_f32(v_address, offsets, mask, variance, 0, MASKED, ALIGNED, False, 0, 0)
    corrected = tl.div_rn(momentum, bias_correction1)
    adaptive = tl.div_rn(bias_correction2_sqrt, tl.sqrt_rn(variance) + eps)
    stepped = tl.where(rectified, param - corrected * lr * adaptive * rect, param - corrected * lr)
    store_f32(p_address, offsets, mask, stepped, 0, MASKED, ALIGNED, False, 0, 0)


@triton.jit
def _radam_kernel(
    rows,
    scalars,
    blocks,
    scale,
    found_inf,
    LOW_WEIGHT: tl.constexpr,
    COUPLED_DECAY: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    tensor, row, offsets, mask, full = block_of(blocks, rows, _WIDTH, BLOCK)
    k = scalars + tensor * _K.width
    if tl.load(found_inf) == 0.0:  # GradScaler found inf/NaN gradients: the step writes nothing
        if full:
            _update(
                row, k, scale, offsets, mask, LOW_WEIGHT, COUPLED_DECAY, MAXIMIZE, HAS_SCALE, False, ALIGNED
            )
        else:
            _update(
                row, k, scale, offsets, mask, LOW_WEIGHT, COUPLED_DECAY, MAXIMIZE, HAS_SCALE, True, ALIGNED
            )


def _plan(params, grads, exp_avgs, exp_avg_sqs, steps) -> Plan:
    """Every check (arvc.optim._fused_args), once per layout; the launches' tables (one per device)."""
    laid_out = check_radam(params, grads, exp_avgs, exp_avg_sqs, steps)
    return Plan([(p.device,) for p in params], [params, laid_out, exp_avgs, exp_avg_sqs], grads)


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
    grad_scale=None,
    found_inf=None,
) -> None:
    """arvc.optim._fused_cpu_steps.radam_ on the tensors' device; `grad_scale` divides every gradient first
    and a set `found_inf` skips the step (GradScaler's, as device tensors: read by the kernel, not the
    host)."""
    lists = radam_lists(params, grads, exp_avgs, exp_avg_sqs, steps)
    if lists is None:
        return
    plan = cached_plan(("triton", "radam"), lists, lambda: _plan(*lists))
    scalars = radam_table(step_values(steps), lr, beta1, beta2, eps, weight_decay)
    skipped = Skipped(found_inf)
    coupled = couples_decay(weight_decay, decoupled_weight_decay)
    low_weight = low_lerp_weight(beta1)
    for _, launch in plan.launches:
        launch.prepare(scalars, grad_scale=grad_scale, found_inf=found_inf)
        launch_blocks(
            _radam_kernel,
            launch,
            LOW_WEIGHT=low_weight,
            COUPLED_DECAY=coupled,
            MAXIMIZE=bool(maximize),
            HAS_SCALE=grad_scale is not None,
        )
        if not skipped:
            commit_steps([steps[i] for i in launch.members])
