"""RAdam: torch.optim.RAdam plus arvc's fused step (C++ on CPU, Triton on CUDA).

Why a subclass: torch has no fused RAdam; on CPU its foreach path makes ~10 passes over memory and is
~5x slower than its own fused AdamW. `fused=True` runs the identical update (same formulas, same
Python-side scalars) in one pass over all float32 tensors: C++ on CPU (_fused_cpu/radam.h), Triton on
CUDA (_fused_triton/radam.py), which also takes GradScaler's scale in the kernel. Every other
setting runs torch's own functional update unchanged, so this *is* torch.optim.RAdam whenever fused
is off.

`step` is written out here rather than calling `torch.optim.RAdam.step`: torch wraps every optimizer
class's `step` with its hook runner, so calling the parent's would fire step hooks twice once any torch
RAdam exists. Each group runs its own path (fused or torch's), so groups may differ.
"""

from __future__ import annotations

import torch
from torch.optim.radam import radam

from arvc.optim._checks import (
    check_param_dtypes,
    evaluate_closure,
    lr_value,
    real_view,
    refused_group_removed,
    step_body,
)
from arvc.optim._fused import (
    FUSED_DEVICES,
    AmpScaling,
    amp_step,
    fused_op,
    mark_modified,
    resolve_fused,
    run_kernel,
)
from arvc.optim._state import load_state_dict_keeping_dtypes, place_steps

__all__ = ["RAdam"]


class RAdam(AmpScaling, torch.optim.RAdam):
    """torch.optim.RAdam with a `fused` path on CPU and CUDA (float32 parameters; not with
    capturable/differentiable).

    The registry switches `fused` on for float32 CPU and CUDA parameters, and passes
    `decoupled_weight_decay=True` (AdamW-style decay, as the CLI states) unless told otherwise; the
    class itself keeps torch's default (coupled L2). If the kernel cannot be built here, or fails its
    first-use check on this GPU, torch's foreach path runs instead, with one warning.
    """

    fused_devices = FUSED_DEVICES  # read by the registry to switch `fused` on automatically
    fused_dtypes = (torch.float32,)  # torch keeps low-precision RAdam state in the parameter's dtype

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        self._requested_fused = fused
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
        )
        self.defaults["fused"] = fused

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        with refused_group_removed(self) as group:
            check_param_dtypes(group["params"], type(self).__name__)
            requested = group.get("fused", getattr(self, "_requested_fused", None))
            group["fused"] = resolve_fused(type(self), requested, group)

    def load_state_dict(self, state_dict: dict) -> None:
        # Keeps this process's fused/foreach choice (how the math runs, not what it is). torch's RAdam
        # keeps its moments in the parameter's dtype (its update requires it), so state saved beside
        # parameters of another dtype is cast as torch.optim.RAdam casts it; `step` goes where
        # capturable keeps it.
        load_state_dict_keeping_dtypes(self, state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                for key, value in state.items():
                    if key != "step" and p.is_floating_point() and value.is_floating_point():
                        state[key] = value.to(p.dtype)
        place_steps(self, lambda group: bool(group["capturable"]))

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; returns the closure's loss if a closure is given."""
        self._accelerator_graph_capture_health_check()
        loss = evaluate_closure(closure)
        skip, grad_scale, found_inf = amp_step(self)  # GradScaler's, when every group is fused
        if skip:
            return loss
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, steps)
            if not params:
                continue
            # torch's functional RAdam picks its own single/foreach body; arvc's dispatch adds the fused one.
            body = step_body(
                radam,
                radam,
                _fused_radam,
                use_fused=bool(group.get("fused")),
                foreach=bool(group["foreach"]),
                grad_scale=grad_scale,
                found_inf=found_inf,
            )
            body(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                steps,
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                foreach=group["foreach"],
                capturable=group["capturable"],
                differentiable=group["differentiable"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                has_complex=has_complex,
            )
        return loss


def _fused_radam(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    steps,
    *,
    beta1,
    beta2,
    lr,
    weight_decay,
    eps,
    maximize,
    decoupled_weight_decay,
    grad_scale=None,
    found_inf=None,
    **_torch_paths,  # foreach, capturable, differentiable, has_complex: what torch's bodies take
) -> None:
    """The same update in one pass over all tensors: C++ on CPU (_fused_cpu/radam.h), Triton on CUDA
    (_fused_triton/radam.py)."""
    # The kernel sees complex tensors as their real views, as torch's own paths do.
    params, grads, exp_avgs, exp_avg_sqs = (
        [real_view(t) for t in tensors] for tensors in (params, grads, exp_avgs, exp_avg_sqs)
    )
    run_kernel(
        fused_op("radam_", params[0].device, grad_scale, found_inf),
        (
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            steps,
            lr_value(lr),
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled_weight_decay,
            maximize,
        ),
        params,
        exp_avgs,
        exp_avg_sqs,
    )
    mark_modified(params, exp_avgs, exp_avg_sqs)
