"""AnyPrecisionAdamW: AdamW whose moments, compensation buffer and parameters may each be bf16/fp16/fp32.

Why: bf16 training halves weight and optimizer memory, but bf16 keeps 8 mantissa bits, so an update
smaller than half a unit in the last place vanishes. Two remedies, each optional:

* Kahan summation for low-precision parameters: a compensation buffer keeps what rounding dropped and
  adds it back on the next step, so the parameters follow an fp32 master copy without storing one.
* Stochastic rounding for low-precision moment buffers: `v * 0.999` rounds back to `v` in bf16, so a
  naive bf16 second moment never decays; rounding up or down at random (with the right probability)
  keeps the moving averages correct in expectation. The random bits are a pure function of
  (seed, parameter index, step, buffer), so save/resume reproduces an uninterrupted run bit for bit.

All arithmetic runs in float32 (float64 for float64 parameters); only storage is low precision.
With float32 parameters and float32 buffers the update is exactly torch.optim.AdamW's.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from arvc.optim._checks import (
    LOW_PRECISION_DTYPES,
    check_common_hyperparameters,
    check_lr,
    check_param_dtypes,
    default_foreach,
    evaluate_closure,
    group_tensors_by_device_and_dtype,
    lr_value,
    params_with_grad,
    parse_dtype,
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
    kernel_seed,
    mark_modified,
    resolve_fused,
    run_kernel,
)
from arvc.optim._rounding import rounding_seed, stochastic_round_
from arvc.optim._state import NoDifferentiableDefault, load_state_dict_keeping_dtypes

__all__ = ["AnyPrecisionAdamW", "any_precision_adamw"]

_MOMENTUM, _VARIANCE = 0, 1  # lanes of the stochastic-rounding hash


class AnyPrecisionAdamW(NoDifferentiableDefault, AmpScaling, Optimizer):
    """AdamW with per-buffer storage dtypes, Kahan-compensated parameters and stochastic rounding.

    Args:
        params: parameters or param groups.
        lr, betas, eps, weight_decay: as torch.optim.AdamW (weight decay is decoupled), but weight_decay
            defaults to 0 as in torchdistx's AnyPrecisionAdamW.
        use_kahan_summation: keep a compensation buffer for bf16/fp16 parameters. It has no effect on
            float32/float64 parameters (nothing is lost to rounding there, so no buffer is allocated).
        momentum_dtype, variance_dtype: storage dtypes of the first and second moments.
        compensation_buffer_dtype: storage dtype of the Kahan buffer (bf16 keeps 8 more bits than the
            parameter, which is what Kahan needs; it is 2 bytes per parameter).
        seed: seeds the stochastic rounding of low-precision moment buffers.
        param_indices: the number each parameter (in constructor order, across groups) has in the
            rounding hash; default its position here. A shard of a larger optimizer (ZeRO) passes the
            parameters' positions in the whole model, so every rank draws the bits one process would.
        stochastic_rounding: round low-precision moments stochastically (True) or to nearest (False —
            only for studies: a bf16 second moment then stops decaying).
        foreach: use the multi-tensor path (one kernel per operation over all tensors). None picks it
            whenever there is more than one tensor; both paths compute the same update.
        fused: use arvc's fused kernel (one pass over memory for all tensors, Kahan and stochastic
            rounding included: C++ on CPU, built on first use, Triton on CUDA; see arvc.optim._fused).
            The registry switches it on for CPU and CUDA parameters; where it cannot run, the foreach
            path runs instead, with one warning. Buffers must then be float32/bfloat16/float16.
    """

    fused_devices = FUSED_DEVICES  # read by the registry to switch `fused` on automatically
    fused_dtypes = FUSED_DTYPES

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        use_kahan_summation: bool = False,
        momentum_dtype: torch.dtype | str = torch.float32,
        variance_dtype: torch.dtype | str = torch.float32,
        compensation_buffer_dtype: torch.dtype | str = torch.bfloat16,
        seed: int = 0,
        stochastic_rounding: bool = True,
        *,
        param_indices=None,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        betas, eps, weight_decay = check_common_hyperparameters(lr, betas, eps, weight_decay)
        check_lr(lr, foreach, type(self).__name__)
        if not isinstance(seed, int):
            raise ValueError(f"Invalid seed: {seed!r}; expected an int")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            use_kahan_summation=bool(use_kahan_summation),
            momentum_dtype=parse_dtype(momentum_dtype, "momentum_dtype"),
            variance_dtype=parse_dtype(variance_dtype, "variance_dtype"),
            compensation_buffer_dtype=parse_dtype(compensation_buffer_dtype, "compensation_buffer_dtype"),
            seed=seed,
            stochastic_rounding=bool(stochastic_rounding),
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)
        self._param_index = None  # id(param) -> its number in the rounding hash (None: its position)
        if param_indices is not None:
            params = [p for group in self.param_groups for p in group["params"]]
            param_indices = [int(i) for i in param_indices]
            if len(param_indices) != len(params) or len(set(param_indices)) != len(param_indices):
                raise ValueError(
                    f"param_indices must give {len(params)} distinct numbers, one per parameter; "
                    f"got {len(param_indices)} ({len(set(param_indices))} distinct)"
                )
            self._param_index = {id(p): i for p, i in zip(params, param_indices, strict=True)}

    def add_param_group(self, param_group: dict) -> None:
        # Dtypes given per group (possibly as strings) are parsed and checked like the constructor's.
        for key in ("momentum_dtype", "variance_dtype", "compensation_buffer_dtype"):
            if key in param_group:
                param_group[key] = parse_dtype(param_group[key], key)
        super().add_param_group(param_group)
        with refused_group_removed(self) as group:
            check_param_dtypes(group["params"], type(self).__name__)
            if getattr(self, "_param_index", None) is not None:
                raise ValueError(
                    "AnyPrecisionAdamW: this optimizer numbers its parameters by param_indices; "
                    "add_param_group cannot number new ones: pass every parameter at construction"
                )
            group["fused"] = resolve_fused(type(self), group["fused"], group)

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts floating state to each parameter's dtype (pytorch#43706); the buffers' dtypes are
        # part of this optimizer's contract, so they are restored exactly as saved.
        load_state_dict_keeping_dtypes(self, state_dict)
        # State saved beside parameters of another precision (a bf16 run fine-tuned in fp32, or the
        # reverse) is made to fit these parameters: a Kahan residual a float32 parameter cannot use is
        # added to it (parameter + compensation is the value the optimizer was tracking), and a bf16/fp16
        # parameter of a Kahan group that was saved without one gets a zero compensation buffer.
        with torch.no_grad():
            for group in self.param_groups:
                for param in group["params"]:
                    state = self.state.get(param)
                    if not state:
                        continue
                    p = real_view(param)
                    kahan = group["use_kahan_summation"] and p.dtype in LOW_PRECISION_DTYPES
                    if "compensation" in state and not kahan:
                        p.add_(state.pop("compensation").to(p.dtype))
                    elif kahan and "compensation" not in state:
                        state["compensation"] = torch.zeros_like(
                            p, dtype=group["compensation_buffer_dtype"], memory_format=torch.preserve_format
                        )

    def _init_state(self, param: torch.Tensor, group: dict) -> dict:
        """The state of `param`, created on first use; its buffers are laid out like the tensor the
        update sees (the real view of a complex parameter)."""
        state = self.state[param]
        p = real_view(param)
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(
                p, dtype=group["momentum_dtype"], memory_format=torch.preserve_format
            )
            state["exp_avg_sq"] = torch.zeros_like(
                p, dtype=group["variance_dtype"], memory_format=torch.preserve_format
            )
            if group["use_kahan_summation"] and p.dtype in LOW_PRECISION_DTYPES:
                state["compensation"] = torch.zeros_like(
                    p, dtype=group["compensation_buffer_dtype"], memory_format=torch.preserve_format
                )
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; returns the closure's loss if a closure is given."""
        loss = evaluate_closure(closure)
        skip, grad_scale, found_inf = amp_step(self)  # GradScaler's, when every group is fused
        if skip:
            return loss

        numbers = getattr(self, "_param_index", None)  # (torch's pickling keeps only groups and state)
        for group, indexed in params_with_grad(self.param_groups, type(self).__name__):
            params, grads, exp_avgs, exp_avg_sqs, compensations, steps, indices = [], [], [], [], [], [], []
            for index, p in indexed:
                state = self._init_state(p, group)
                # Complex parameters are stepped as their real view, as torch's Adam does.
                params.append(real_view(p))
                grads.append(real_view(p.grad))
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                compensations.append(state.get("compensation"))
                steps.append(state["step"])
                indices.append(index if numbers is None else numbers[id(p)])
            any_precision_adamw(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                compensations,
                steps,
                indices,
                lr=lr_value(group["lr"]),
                beta1=group["betas"][0],
                beta2=group["betas"][1],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                seed=group["seed"],
                stochastic_rounding=group["stochastic_rounding"],
                foreach=default_foreach(group["foreach"], group["lr"], len(params)),
                fused=group.get("fused") or False,
                grad_scale=grad_scale,
                found_inf=found_inf,
            )
        return loss


def _store(buffer, value, stochastic: bool, seed: int, index: int, step: int, lane: int) -> None:
    """Write an fp32 result into its (possibly low-precision) buffer.

    Both moments of a parameter share one rounding hash per step (buffer id 0) and take different
    bits of it (`lane`), which lets the fused kernel hash each element once.
    """
    if stochastic:
        stochastic_round_(buffer, value, rounding_seed(seed, index, step, 0), lane=lane)
    else:
        buffer.copy_(value)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_compute(buffer: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The buffer itself when it is already in the compute dtype (updated in place), else an upcast copy."""
    return buffer if buffer.dtype == dtype else buffer.to(dtype)


def any_precision_adamw(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    compensations: list[torch.Tensor | None],
    steps: list[torch.Tensor],
    param_indices: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    seed: int,
    stochastic_rounding: bool = True,
    foreach: bool = False,
    fused: bool = False,
    grad_scale: float | torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> None:
    """Functional AnyPrecisionAdamW step over a list of parameters; `fused`/`foreach` pick the body, and
    `grad_scale`/`found_inf` are GradScaler's (see `_checks.step_body`, the dispatch of every arvc step)."""
    body = step_body(
        _single_tensor_any_precision_adamw,
        _multi_tensor_any_precision_adamw,
        _fused_any_precision_adamw,
        use_fused=fused,
        foreach=foreach,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )
    body(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        compensations,
        steps,
        param_indices,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        seed=seed,
        stochastic_rounding=stochastic_rounding,
    )


def _single_tensor_any_precision_adamw(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    compensations,
    steps,
    param_indices,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    seed,
    stochastic_rounding,
) -> None:
    """The readable reference: one parameter at a time."""
    for param, grad, exp_avg, exp_avg_sq, compensation, step_t, index in zip(
        params, grads, exp_avgs, exp_avg_sqs, compensations, steps, param_indices, strict=True
    ):
        step_t += 1
        step = int(step_t.item())
        dtype = _compute_dtype(param.dtype)
        grad = grad.to(dtype)

        m = _as_compute(exp_avg, dtype)
        v = _as_compute(exp_avg_sq, dtype)
        m.lerp_(grad, 1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if m is not exp_avg:
            _store(exp_avg, m, stochastic_rounding, seed, index, step, _MOMENTUM)
        if v is not exp_avg_sq:
            _store(exp_avg_sq, v, stochastic_rounding, seed, index, step, _VARIANCE)

        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / bias_correction1
        denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)

        if param.dtype == dtype:
            # Full-precision parameters: exactly torch.optim.AdamW's update.
            param.mul_(1 - lr * weight_decay)
            param.addcdiv_(m, denom, value=-step_size)
            continue

        # Low-precision parameters: update the (compensated) value in fp32, then round once.
        master = param.to(dtype)
        if compensation is not None:
            master.add_(compensation.to(dtype))
        master.mul_(1 - lr * weight_decay).addcdiv_(m, denom, value=-step_size)
        param.copy_(master)
        if compensation is not None:
            # What rounding to the parameter's dtype dropped is carried into the next step.
            compensation.copy_(master.sub_(param.to(dtype)))


def _multi_tensor_any_precision_adamw(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    compensations,
    steps,
    param_indices,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    seed,
    stochastic_rounding,
) -> None:
    """The same update with torch._foreach_* ops per (device, dtype) group; rounding stays per tensor."""
    if not params:
        return
    tensors = [params, grads, exp_avgs, exp_avg_sqs, compensations, steps, param_indices]
    for (p, g, m, v, c, st, indices), _ in group_tensors_by_device_and_dtype(tensors).values():
        torch._foreach_add_(st, 1)
        step_values = [int(t.item()) for t in st]
        dtype = _compute_dtype(p[0].dtype)
        g32 = [x if x.dtype == dtype else x.to(dtype) for x in g]
        m32 = [_as_compute(x, dtype) for x in m]
        v32 = [_as_compute(x, dtype) for x in v]
        torch._foreach_lerp_(m32, g32, 1 - beta1)
        torch._foreach_mul_(v32, beta2)
        torch._foreach_addcmul_(v32, g32, g32, value=1 - beta2)
        for stored, fresh, lane in ((m, m32, _MOMENTUM), (v, v32, _VARIANCE)):
            for x, x32, index, step in zip(stored, fresh, indices, step_values, strict=True):
                if x32 is not x:
                    _store(x, x32, stochastic_rounding, seed, index, step, lane)

        denom = torch._foreach_sqrt(v32)
        torch._foreach_div_(denom, [(1 - beta2**t) ** 0.5 for t in step_values])
        torch._foreach_add_(denom, eps)
        step_sizes = [-lr / (1 - beta1**t) for t in step_values]
        if p[0].dtype == dtype:
            torch._foreach_mul_(p, 1 - lr * weight_decay)
            torch._foreach_addcdiv_(p, m32, denom, step_sizes)
            continue
        master = [x.to(dtype) for x in p]
        # Only some parameters of a (device, dtype) group may carry a Kahan buffer (use_kahan_summation
        # differs between param groups, or state was loaded): each buffer pairs with its own parameter.
        with_kahan = [i for i, x in enumerate(c) if x is not None]
        kahan = [c[i] for i in with_kahan]
        if kahan:
            torch._foreach_add_([master[i] for i in with_kahan], [x.to(dtype) for x in kahan])
        torch._foreach_mul_(master, 1 - lr * weight_decay)
        torch._foreach_addcdiv_(master, m32, denom, step_sizes)
        torch._foreach_copy_(p, master)
        if kahan:
            residual = [master[i] for i in with_kahan]
            torch._foreach_sub_(residual, [p[i].to(dtype) for i in with_kahan])
            torch._foreach_copy_(kahan, residual)


def _fused_any_precision_adamw(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    compensations,
    steps,
    param_indices,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    seed,
    stochastic_rounding,
    grad_scale=None,
    found_inf=None,
) -> None:
    """The same update in one pass over all tensors: C++ on CPU (_fused_cpu/any_precision_adamw.h),
    Triton on CUDA (_fused_triton/any_precision_adamw.py)."""
    if not params:
        return
    compensation_of, count = [], 0
    for compensation in compensations:
        compensation_of.append(-1 if compensation is None else count)
        count += compensation is not None
    run_kernel(
        fused_op("any_precision_adamw_", params[0].device, grad_scale, found_inf),
        (
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [c for c in compensations if c is not None],
            compensation_of,
            steps,
            param_indices,
            float(lr),
            beta1,
            beta2,
            eps,
            weight_decay,
            kernel_seed(seed),
            stochastic_rounding,
        ),
        params,
        exp_avgs,
        exp_avg_sqs,
        compensations,
    )
    mark_modified(params, exp_avgs, exp_avg_sqs, compensations)
