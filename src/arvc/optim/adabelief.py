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

from arvc.optim._functional import (
    check_common_hyperparameters,
    load_state_dict_keeping_dtypes,
    params_with_grad,
)

__all__ = ["AdaBelief", "adabelief"]


class AdaBelief(Optimizer):
    """AdaBelief with decoupled weight decay and per-parameter step counters.

    Args:
        params: parameters or param groups.
        lr: learning rate (1e-3).
        betas: coefficients of the gradient mean and of the belief variance ((0.9, 0.999)).
        eps: added to the belief variance each step and to the denominator (1e-16, as the reference).
        weight_decay: decoupled weight decay, p ← p·(1 − lr·wd) (0).
    """

    amsgrad = False  # AdaBeliefV2 keeps the running maximum of the belief variance

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
    ) -> None:
        check_common_hyperparameters(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def load_state_dict(self, state_dict: dict) -> None:
        # Moments of bf16/fp16 parameters are float32 and must stay so on resume (pytorch#43706).
        load_state_dict_keeping_dtypes(self, state_dict)

    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group, indexed in params_with_grad(self.param_groups, type(self).__name__):
            params = [p for _, p in indexed]
            states = [self._init_state(p) for p in params]
            adabelief(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_var"] for s in states],
                [s.get("max_exp_avg_var") for s in states],
                [s["step"] for s in states],
                amsgrad=self.amsgrad,
                lr=group["lr"],
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
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
) -> None:
    """Functional AdaBelief step over a list of parameters (the single-tensor reference path)."""
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
