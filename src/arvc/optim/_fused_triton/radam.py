"""RAdam in Triton: _fused_cpu/radam.h operation for operation (torch.optim.RAdam's update, float32)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from arvc.optim._fused_triton.common import (
    Launch,
    Plan,
    Skipped,
    block_of,
    cached_plan,
    check_lengths,
    check_param,
    check_tensor,
    commit_steps,
    float32,
    groups,
    launch_blocks,
    load_f32,
    matching_grad,
    next_step,
    per_tensor,
    step_values,
    store_f32,
)

__all__ = ["radam_"]

_WIDTH = tl.constexpr(5)  # numel, param, grad, exp_avg, exp_avg_sq
_SCALARS = tl.constexpr(11)  # per-step numbers per tensor (see _scalars)


@triton.jit
def _update(row, k, scale, offsets, mask, LOW_WEIGHT, COUPLED_DECAY, MAXIMIZE, HAS_SCALE, MASKED, ALIGNED):
    decay = tl.load(k)
    weight_decay = tl.load(k + 1)
    w = tl.load(k + 2)
    beta2 = tl.load(k + 3)
    one_minus_beta2 = tl.load(k + 4)
    eps = tl.load(k + 5)
    bias_correction1 = tl.load(k + 6)
    lr = tl.load(k + 7)
    bias_correction2_sqrt = tl.load(k + 8)
    rect = tl.load(k + 9)
    rectified = tl.load(k + 10) != 0.0
    p_address = tl.load(row + 1)
    m_address = tl.load(row + 3)
    v_address = tl.load(row + 4)
    grad = load_f32(tl.load(row + 2), offsets, mask, 0, MASKED, ALIGNED)
    if HAS_SCALE:
        grad = tl.div_rn(grad, tl.load(scale))
    if MAXIMIZE:
        grad = -grad
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
    k = scalars + tensor * _SCALARS
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
    """Every check, once per layout; the launches' tables (one launch per device)."""
    laid_out = []
    for i, param in enumerate(params):
        check_param(param)
        for t in (param, grads[i], exp_avgs[i], exp_avg_sqs[i]):
            check_tensor(t, param, "tensor", t is not grads[i])
            if t.dtype != torch.float32:
                raise RuntimeError("arvc fused RAdam: float32 tensors only")
        laid_out.append(matching_grad(grads[i], param))
        next_step(steps[i])
    launches = []
    for device, members in groups([p.device for p in params]).items():
        addresses = [
            [params[i].data_ptr(), laid_out[i].data_ptr(), exp_avgs[i].data_ptr(), exp_avg_sqs[i].data_ptr()]
            for i in members
        ]
        launches.append((device, Launch(device, members, [params[i].numel() for i in members], addresses)))
    return Plan(launches, [g for g, grad in zip(laid_out, grads, strict=True) if g is not grad])


def _scalars(step: int, lr, beta1, beta2, eps, weight_decay) -> list[float]:
    """The scalars exactly as torch.optim.radam computes them in Python (double precision)."""
    step = float(step)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / bias_correction2
    rectified = rho_t > 5.0
    rect = (
        ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) ** 0.5
        if rectified
        else 1.0
    )
    return [
        1.0 - lr * weight_decay if weight_decay != 0.0 else 1.0,
        weight_decay,
        1.0 - beta1,
        beta2,
        1.0 - beta2,
        eps,
        bias_correction1,
        lr,
        bias_correction2**0.5,
        rect,
        1.0 if rectified else 0.0,
    ]


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
    """torch.ops.arvc_fused.radam_ on the tensors' device; `grad_scale` divides every gradient first and a
    set `found_inf` skips the step (GradScaler's, as device tensors: read by the kernel, not the host)."""
    count = len(params)
    check_lengths("RAdam", count, grads, exp_avgs, exp_avg_sqs, steps)
    if count == 0:
        return
    lists = (params, grads, exp_avgs, exp_avg_sqs, steps)
    plan = cached_plan(("radam",), lists, lambda: _plan(*lists))
    scalars = per_tensor(step_values(steps), lambda step: _scalars(step, lr, beta1, beta2, eps, weight_decay))
    skipped = Skipped(found_inf)
    # A weight decay of 0 changes nothing in either form; torch skips it, and so does the decoupled form.
    coupled = weight_decay != 0.0 and not decoupled_weight_decay
    low_weight = float32(1.0 - beta1) < 0.5  # the CPU kernel tests its float32 lerp weight
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
