"""Argument validation and step plumbing shared by arvc's optimizers (one place, optimi's layout)."""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Iterator

import torch

LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


def parse_dtype(value: torch.dtype | str, name: str) -> torch.dtype:
    """Turn a torch dtype or its name ("bfloat16", "bf16", ...) into a floating torch dtype."""
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise ValueError(f"Invalid {name}: {value} is not a floating-point dtype")
        return value
    if isinstance(value, str):
        key = value.lower().removeprefix("torch.")
        if key in _DTYPE_NAMES:
            return _DTYPE_NAMES[key]
    valid = ", ".join(sorted({"float32", "bfloat16", "float16", "float64"}))
    raise ValueError(f"Invalid {name}: {value!r}; use a torch dtype or one of {valid}")


def _real(value) -> float | None:
    """`value` as a float when it is a real number (Python, NumPy) or a one-element real tensor, the
    types torch.optim accepts for its hyperparameters; None for anything else."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 and not value.is_complex() else None
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def _finite_non_negative(value) -> bool:
    real = _real(value)
    return real is not None and math.isfinite(real) and real >= 0.0


def check_common_hyperparameters(lr, betas, eps, weight_decay) -> tuple[tuple[float, float], float, float]:
    """Validate the Adam-family hyperparameters up front, naming the bad one (torch.optim's messages).

    Accepts what torch.optim accepts (Python or NumPy numbers, one-element tensors) and returns betas,
    eps and weight_decay as Python floats, the form every path of arvc's own classes computes with
    (they have no capturable mode that would need tensors); lr stays as given (a tensor lr is supported).
    """
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not _finite_non_negative(lr):
        raise ValueError(f"Invalid learning rate: {lr}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")
    for index, beta in enumerate(betas):
        real = _real(beta)
        if real is None or not 0.0 <= real < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    if not _finite_non_negative(eps):
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not _finite_non_negative(weight_decay):
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    return (_real(betas[0]), _real(betas[1])), _real(eps), _real(weight_decay)


@contextlib.contextmanager
def refused_group_removed(optimizer: torch.optim.Optimizer) -> Iterator[dict]:
    """Around the checks of the group `add_param_group` has just appended: a group they refuse is taken
    out again, so a refused `add_param_group` leaves the optimizer as it was (and its next step works)."""
    try:
        yield optimizer.param_groups[-1]
    except BaseException:
        optimizer.param_groups.pop()
        raise


def evaluate_closure(closure):
    """Run an optimizer closure with gradients enabled (step() itself runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def params_with_grad(param_groups: list[dict], optimizer_name: str):
    """Yield (group, [(index, param), ...]) for the params that have a gradient.

    The index counts every parameter across all groups in order, so it names a parameter stably
    (it seeds stochastic rounding). Sparse gradients are refused with a clear error.
    """
    offset = 0
    for group in param_groups:
        indexed = []
        for i, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{optimizer_name} does not support sparse gradients; use torch.optim.SparseAdam"
                )
            indexed.append((offset + i, p))
        offset += len(group["params"])
        yield group, indexed


def group_tensors_by_device_and_dtype(tensor_lists: list[list]) -> dict:
    """Split parallel lists by the (device, dtype) of the first list, for the foreach bodies.

    Returns {(device, dtype): (lists restricted to that group, indices)}; entries of the other lists
    may be None or live elsewhere (step counters stay on the CPU).
    """
    groups: dict = {}
    for index, leader in enumerate(tensor_lists[0]):
        groups.setdefault((leader.device, leader.dtype), []).append(index)
    return {
        key: ([[values[i] for i in indices] for values in tensor_lists], indices)
        for key, indices in groups.items()
    }


def check_lr(lr, foreach: bool | None, name: str) -> None:
    """torch.optim.AdamW's rules for a tensor learning rate, applied at construction.

    A 1-element tensor works on the single-tensor and fused paths; torch refuses it with an explicit
    `foreach=True` (without capturable), and so does arvc, with torch's message.
    """
    if isinstance(lr, torch.Tensor):
        if foreach:
            raise ValueError(
                f"{name}: lr as a Tensor is not supported for capturable=False and foreach=True; "
                "pass a float lr or leave foreach unset"
            )
        if lr.numel() != 1:
            raise ValueError(f"{name}: Tensor lr must be 1-element, got shape {tuple(lr.shape)}")


def lr_value(lr) -> float:
    """The learning rate as a Python float (a tensor lr is read once per step)."""
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)


def default_foreach(foreach: bool | None, lr, count: int) -> bool:
    """The path a group runs when `foreach` is unset: foreach for more than one tensor, except with a
    tensor lr, where torch's AdamW also keeps the single-tensor path."""
    if foreach is not None:
        return foreach
    return count > 1 and not isinstance(lr, torch.Tensor)


def check_param_dtypes(params, name: str) -> None:
    """Refuse, at construction, parameters no path of arvc's optimizers can step.

    Complex parameters are stepped as their real view (torch.view_as_real, as torch's Adam does), which
    needs a real floating dtype underneath: complex32 has none that arvc's buffers support.
    """
    for p in params:
        if p.dtype == torch.complex32:
            raise ValueError(f"{name}: complex32 parameters are not supported; use complex64 or complex128")
        if not (p.is_floating_point() or p.is_complex()):
            raise ValueError(f"{name}: parameters must be floating point or complex tensors, got {p.dtype}")


_REAL_DTYPES = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a `dtype` tensor's real view (what every path steps); a real dtype unchanged."""
    return _REAL_DTYPES.get(dtype, dtype)


def real_view(t: torch.Tensor | None) -> torch.Tensor | None:
    """A complex tensor as its real view (last dimension of size 2); anything else unchanged."""
    return torch.view_as_real(t) if t is not None and t.is_complex() else t


def unscaled(body, grad_scale):
    """`body(params, grads, *rest)` that first divides the gradients by `grad_scale` (GradScaler's scale),
    into copies: the gradients the caller holds are not changed."""

    def run(params, grads, *rest, **kwargs):
        return body(params, torch._foreach_div(list(grads), grad_scale), *rest, **kwargs)

    return run


def step_body(single, multi, fused, *, use_fused: bool, foreach: bool, grad_scale=None, found_inf=None):
    """The body that runs one functional step (torch.optim's single/foreach/fused dispatch, once for every
    arvc optimizer): `fused(..., grad_scale=, found_inf=)` where the group runs fused (the kernel divides
    by the scale and reads the overflow flag itself), else `multi` (foreach) or `single`, on gradients
    divided by `grad_scale` first. Each body is called as `body(params, grads, *state, **hyperparameters)`.
    """
    if use_fused:
        return functools.partial(fused, grad_scale=grad_scale, found_inf=found_inf)
    body = multi if foreach else single
    return body if grad_scale is None else unscaled(body, grad_scale)
