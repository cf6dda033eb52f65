"""AdamW: torch.optim.AdamW, with its fused CPU kernel kept to the gradient layouts it handles.

torch 2.13's fused CPU AdamW walks a gradient's memory as if it were laid out like its parameter: an
expanded gradient (`torch.ones(1).expand(3)`) is read past its storage and a transposed or differently
strided one updates the wrong elements, and so is a parameter that is a strided (non-dense) view. This
class gives the fused kernel, for exactly those tensors, a copy laid out as it expects (the gradient the
user holds is not touched; a parameter copy is written back). Everything
else is torch's own code: same state, same state dicts, same paths and numbers.

`step` is written out (the body of torch.optim.Adam.step) rather than calling the parent's, which
torch wraps with its hook runner: calling it would fire step hooks twice.
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam
from torch.optim.optimizer import _use_grad_for_differentiable

from arvc.optim._rounding import is_dense
from arvc.optim._state import keeping_paths, place_steps

__all__ = ["AdamW"]


def fused_safe_grad(param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """`grad` itself when torch's fused kernel reads it correctly (dense, with the parameter's strides),
    else a copy laid out like the parameter."""
    if grad.stride() == param.stride() and is_dense(grad):
        return grad
    laid_out = torch.empty_like(param, memory_format=torch.preserve_format)
    return laid_out.copy_(grad)


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW whose fused path steps gradients of any layout correctly (see module docstring)."""

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load (state cast to each parameter's dtype), keeping this process's foreach/fused.

        torch takes the saved groups' paths: a fused optimizer (as the registry builds one) that loads a
        foreach checkpoint would still tell GradScaler it takes the scale, and then refuse it.
        """
        with keeping_paths(self):
            super().load_state_dict(state_dict)
        place_steps(self, lambda group: bool(group["fused"] or group["capturable"]))

    @_use_grad_for_differentiable
    def step(self, closure=None):
        """Perform one optimization step; returns the closure's loss if a closure is given."""
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
            beta1, beta2 = group["betas"]
            has_complex = self._init_group(
                group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps
            )
            stepped = params
            if group["fused"]:
                # A non-dense parameter (a strided view) is stepped through a dense copy, which its
                # state buffers already match (zeros_like gives a non-dense tensor contiguous strides).
                stepped = [p if is_dense(p) else p.contiguous() for p in params]
                grads = [fused_safe_grad(p, g) for p, g in zip(stepped, grads, strict=True)]
            adam(
                stepped,
                grads,
                exp_avgs,
                exp_avg_sqs,
                max_exp_avg_sqs,
                steps,
                amsgrad=group["amsgrad"],
                has_complex=has_complex,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                foreach=group["foreach"],
                capturable=group["capturable"],
                differentiable=group["differentiable"],
                fused=group["fused"],
                grad_scale=getattr(self, "grad_scale", None),
                found_inf=getattr(self, "found_inf", None),
                decoupled_weight_decay=group["decoupled_weight_decay"],
            )
            for param, copy in zip(params, stepped, strict=True):
                if copy is not param:
                    param.copy_(copy)
        return loss
