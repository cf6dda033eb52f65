"""AdaBelief (Zhuang et al., NeurIPS 2020): Adam whose step size follows the *belief* in the gradient.

Adam divides by the running mean of g²; AdaBelief divides by the running mean of (g − m)², the squared
distance between the gradient and its prediction (the momentum). When gradients agree with the
prediction the step grows, when they scatter it shrinks — better-conditioned steps than Adam's.

Semantics follow adabelief-pytorch 0.2.x with rectify=False, weight_decouple=True (decoupled weight
decay as in AdamW), with ε added into the second moment every step and again to the denominator.

Two deliberate differences, both documented in docs/optimizers.md:
* β1 = 0: the reference's residual g − m is then identically 0 (m is g), the second moment collapses to
  ≈ε and the step explodes to ≈ lr·g/√ε (adabelief-pytorch goes to inf/NaN). arvc measures the residual
  against the *previous* momentum in that case — with β1 = 0 that is the previous gradient — so the
  step stays finite and the first step equals Adam's. For β1 > 0 nothing changes.
* bf16/fp16 parameters: the moments are kept in float32 and the update computed in float32, then the
  parameter is rounded once (the reference overflows to NaN in fp16).
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from arvc.optim._checks import (
    check_common_hyperparameters,
    check_lr,
    check_param_dtypes,
    default_foreach,
    evaluate_closure,
    group_tensors_by_device_and_dtype,
    lr_value,
    params_with_grad,
    real_view,
    refused_group_removed,
    step_body,
)
from arvc.optim._fused import (
    FUSED_DEVICES,
    FUSED_DTYPES,
    AmpScaling,
    amp_step,
    fused_op,
    mark_modified,
    resolve_fused,
    run_kernel,
)
from arvc.optim._state import NoDifferentiableDefault, load_state_dict_keeping_dtypes, parameter_states

__all__ = ["AdaBelief", "adabelief"]


class AdaBelief(NoDifferentiableDefault, AmpScaling, Optimizer):
    """AdaBelief with decoupled weight decay and per-parameter step counters.

    Args:
        params: parameters or param groups.
        lr: learning rate (1e-3).
        betas: coefficients of the gradient mean and of the belief variance ((0.9, 0.999)).
        eps: added to the belief variance each step and to the denominator (1e-16, as the reference).
        weight_decay: decoupled weight decay, p ← p·(1 − lr·wd) (0).
        foreach: use the multi-tensor path (one kernel per operation over all tensors). None picks it
            whenever there is more than one tensor; both paths compute the same update.
        fused: use arvc's fused kernel (one pass over memory for all tensors: C++ on CPU, built on
            first use, Triton on CUDA; see arvc.optim._fused). The registry switches it on for CPU and
            CUDA parameters; where it cannot run, the foreach path runs instead, with one warning.
    """

    amsgrad = False  # AdaBeliefV2 keeps the running maximum of the belief variance
    fused_devices = FUSED_DEVICES  # read by the registry to switch `fused` on automatically
    fused_dtypes = FUSED_DTYPES

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        betas, eps, weight_decay = check_common_hyperparameters(lr, betas, eps, weight_decay)
        check_lr(lr, foreach, type(self).__name__)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach, fused=fused
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        with refused_group_removed(self) as group:
            check_param_dtypes(group["params"], type(self).__name__)
            group["fused"] = resolve_fused(type(self), group["fused"], group)

    def load_state_dict(self, state_dict: dict) -> None:
        # Moments of bf16/fp16 parameters are float32 and must stay so on resume (pytorch#43706).
        load_state_dict_keeping_dtypes(self, state_dict)
        # AdaBelief <-> AdaBeliefV2 (and adabelief-pytorch with either amsgrad): the buffers agree but
        # for AMSGrad's running maximum. Starting that maximum at the loaded variance continues the run
        # as if AMSGrad had been on from here; without AMSGrad the maximum is dropped.
        for _, state in parameter_states(self):
            if self.amsgrad and "exp_avg_var" in state and "max_exp_avg_var" not in state:
                state["max_exp_avg_var"] = state["exp_avg_var"].clone(memory_format=torch.preserve_format)
            elif not self.amsgrad:
                state.pop("max_exp_avg_var", None)

    def _init_state(self, param: torch.Tensor) -> dict:
        """The state of `param`, created on first use; its buffers are laid out like the tensor the
        update sees (the real view of a complex parameter)."""
        state = self.state[param]
        p = real_view(param)
        if len(state) == 0:
            buffer_dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=buffer_dtype, memory_format=torch.preserve_format)
            state["exp_avg_var"] = torch.zeros_like(
                p, dtype=buffer_dtype, memory_format=torch.preserve_format
            )
            if self.amsgrad:
                state["max_exp_avg_var"] = torch.zeros_like(
                    p, dtype=buffer_dtype, memory_format=torch.preserve_format
                )
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; returns the closure's loss if a closure is given."""
        loss = evaluate_closure(closure)
        skip, grad_scale, found_inf = amp_step(self)  # GradScaler's, when every group is fused
        if skip:
            return loss

        for group, indexed in params_with_grad(self.param_groups, type(self).__name__):
            states = [self._init_state(p) for _, p in indexed]
            # Complex parameters are stepped as their real view, as torch's Adam does.
            params = [real_view(p) for _, p in indexed]
            adabelief(
                params,
                [real_view(p.grad) for _, p in indexed],
                [s["exp_avg"] for s in states],
                [s["exp_avg_var"] for s in states],
                [s.get("max_exp_avg_var") for s in states],
                [s["step"] for s in states],
                amsgrad=self.amsgrad,
                lr=lr_value(group["lr"]),
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                foreach=default_foreach(group["foreach"], group["lr"], len(params)),
                fused=group.get("fused") or False,
                grad_scale=grad_scale,
                found_inf=found_inf,
            )
        return loss


def adabelief(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_vars: list[torch.Tensor],
    max_exp_avg_vars: list[torch.Tensor | None],
    steps: list[torch.Tensor],
    *,
    amsgrad: bool,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    foreach: bool = False,
    fused: bool = False,
    grad_scale: float | torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> None:
    """Functional AdaBelief step over a list of parameters; `fused`/`foreach` pick the body, and
    `grad_scale`/`found_inf` are GradScaler's (see `_checks.step_body`, the dispatch of every arvc step)."""
    body = step_body(
        _single_tensor_adabelief,
        _multi_tensor_adabelief,
        _fused_adabelief,
        use_fused=fused,
        foreach=foreach,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )
    body(
        params,
        grads,
        exp_avgs,
        exp_avg_vars,
        max_exp_avg_vars,
        steps,
        amsgrad=amsgrad,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
    )


def _single_tensor_adabelief(
    params,
    grads,
    exp_avgs,
    exp_avg_vars,
    max_exp_avg_vars,
    steps,
    *,
    amsgrad,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
) -> None:
    """The readable reference: one parameter at a time."""
    for param, grad, exp_avg, exp_avg_var, max_exp_avg_var, step_t in zip(
        params, grads, exp_avgs, exp_avg_vars, max_exp_avg_vars, steps, strict=True
    ):
        step_t += 1
        step = int(step_t.item())
        # Low-precision parameters are updated through a float32 copy and rounded once at the end.
        master = param if param.dtype == exp_avg.dtype else param.to(exp_avg.dtype)
        grad = grad.to(exp_avg.dtype)

        master.mul_(1 - lr * weight_decay)
        if beta1 == 0.0:
            residual = grad - exp_avg  # against the previous momentum: see the module docstring
            exp_avg.copy_(grad)
        else:
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            residual = grad - exp_avg
        exp_avg_var.mul_(beta2).addcmul_(residual, residual, value=1 - beta2).add_(eps)
        if amsgrad:
            torch.maximum(max_exp_avg_var, exp_avg_var, out=max_exp_avg_var)
            belief = max_exp_avg_var
        else:
            belief = exp_avg_var

        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        denom = (belief.sqrt() / bias_correction2_sqrt).add_(eps)
        master.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
        if master is not param:
            param.copy_(master)


def _multi_tensor_adabelief(
    params,
    grads,
    exp_avgs,
    exp_avg_vars,
    max_exp_avg_vars,
    steps,
    *,
    amsgrad,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
) -> None:
    """The same update with torch._foreach_* ops, grouped by device and dtype (as torch.optim does)."""
    if not params:
        return
    tensors = [
        params,
        grads,
        exp_avgs,
        exp_avg_vars,
        max_exp_avg_vars if amsgrad else [None] * len(params),
        steps,
    ]
    for (
        device_params,
        device_grads,
        device_m,
        device_s,
        device_smax,
        device_steps,
    ), _ in group_tensors_by_device_and_dtype(tensors).values():
        torch._foreach_add_(device_steps, 1)
        step_values = [int(s.item()) for s in device_steps]
        buffer_dtype = device_m[0].dtype
        masters = [p if p.dtype == buffer_dtype else p.to(buffer_dtype) for p in device_params]
        grads32 = [g if g.dtype == buffer_dtype else g.to(buffer_dtype) for g in device_grads]

        if weight_decay != 0:
            torch._foreach_mul_(masters, 1 - lr * weight_decay)
        if beta1 == 0.0:
            residual = torch._foreach_sub(grads32, device_m)
            torch._foreach_copy_(device_m, grads32)
        else:
            torch._foreach_mul_(device_m, beta1)
            torch._foreach_add_(device_m, grads32, alpha=1 - beta1)
            residual = torch._foreach_sub(grads32, device_m)
        torch._foreach_mul_(device_s, beta2)
        torch._foreach_addcmul_(device_s, residual, residual, value=1 - beta2)
        torch._foreach_add_(device_s, eps)
        if amsgrad:
            torch._foreach_maximum_(device_smax, device_s)
        denom = torch._foreach_sqrt(device_smax if amsgrad else device_s)
        torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in step_values])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(masters, device_m, denom, [-lr / (1 - beta1**t) for t in step_values])
        low = [(p, m) for p, m in zip(device_params, masters, strict=True) if m is not p]
        if low:
            torch._foreach_copy_([p for p, _ in low], [m for _, m in low])


def _fused_adabelief(
    params,
    grads,
    exp_avgs,
    exp_avg_vars,
    max_exp_avg_vars,
    steps,
    *,
    amsgrad,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    grad_scale=None,
    found_inf=None,
) -> None:
    """The same update in one pass over all tensors: C++ on CPU (_fused_cpu/adabelief.h), Triton on CUDA
    (_fused_triton/adabelief.py)."""
    if not params:
        return
    smax = max_exp_avg_vars if amsgrad else []
    run_kernel(
        fused_op("adabelief_", params[0].device, grad_scale, found_inf),
        (
            params,
            grads,
            exp_avgs,
            exp_avg_vars,
            smax,
            steps,
            amsgrad,
            float(lr),
            beta1,
            beta2,
            eps,
            weight_decay,
        ),
        params,
        exp_avgs,
        exp_avg_vars,
        smax or [None] * len(params),
    )
    mark_modified(params, exp_avgs, exp_avg_vars, max_exp_avg_vars if amsgrad else [])
