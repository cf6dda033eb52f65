"""Schedule-free AdamW (Defazio et al., The Road Less Scheduled, 2024, arXiv:2405.15682).

No learning-rate schedule and no run length: the optimizer keeps two sequences and reads a third off them.

* z: the base sequence, an SGD-like step on the Adam-normalized gradient, z <- z - lr*g;
* x: the average of the z's, weighted by c_{t+1} = w_t / sum(w) with w_t = t**r * lr_max**weight_lr_power;
  the weights to *evaluate* (good whenever training stops);
* y = (1 - beta1)*z + beta1*x: where the gradient is taken; the parameters hold y while training.

Only y (the parameters) and z are stored; x is recovered from them, which is the `train()` / `eval()`
contract of the reference (the `schedulefree` package, 1.4.1): `eval()` moves the parameters to x,
`train()` back to y, and every param group's `train_mode` says which one they hold. `step()` in eval mode
is an error. A state dict records the mode beside z, so a checkpoint resumes in the mode it was saved in.

Semantics are the reference's `AdamWScheduleFree`, step for step (same operations in the same order, so the
same paths agree bit for bit): the second moment and its bias correction as Adam's, a linear warm-up of lr
over `warmup_steps` inside the optimizer, decoupled weight decay taken at y and added to the normalized
gradient, the step counter `k` and the running `weight_sum`/`lr_max` per param group (in the group's
dict, as the reference keeps them: its state dicts load here and back). Deliberate differences:
* the gradients are not modified (the reference normalizes them in place);
* beta1 = 0 is refused (x cannot be recovered from y and z: `eval()` divides by beta1);
* a new optimizer starts in train mode (the reference's starts in eval mode and refuses `step()` until
  `train()`): before the first step y = x = z, so the mode only matters once there is state, and code
  that only trains (the torch.optim contract, benchmarks) needs no call; code that evaluates calls
  `eval()` as with the reference;
* a param group added later joins the others' mode (the reference's starts in eval mode, which its
  `eval()` then skips); `step()` checks every group's mode, not only the first;
* `maximize` and complex parameters (stepped as their real view) are supported.

State per parameter: z and exp_avg_sq, in the parameter's dtype (as the reference keeps them).

Paths: the single-tensor loop (the readable reference), foreach, and `fused=True`, arvc's fused kernel for
float32 parameters (one pass over memory for all tensors: C++ on CPU, _fused_cpu/schedule_free.h; Triton
on CUDA, _fused_triton/schedule_free.py), which the registry switches on where it can run, as for its other
fused optimizers. The kernel runs the loop's float32 operations in the same order; the group's numbers
(step, warm-up or rectification, the weight ckp1) are computed here once per step for every path. Low-
precision parameters keep the foreach path (the reference rounds every operation to their dtype). GradScaler
is not handed to the kernel (`_step_supports_amp_scaling` is False): a step it skips must leave the
group's step count and weights as they were, so it unscales and skips the step itself.

`RAdamScheduleFree` (radam_schedulefree.py) shares everything here but the learning-rate factor.
"""

from __future__ import annotations

import math
import numbers

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
from arvc.optim._fused import FUSED_DEVICES, fused_op, mark_modified, resolve_fused, run_kernel
from arvc.optim._state import NoDifferentiableDefault, load_state_dict_keeping_dtypes

__all__ = ["AdamWScheduleFree", "ScheduleFreeAdam", "schedule_free_adam"]


def _check_schedule_free(group: dict, name: str) -> None:
    """The hyperparameters every schedule-free group needs beyond Adam's, each named when refused."""
    betas, _, _ = check_common_hyperparameters(
        group["lr"], group["betas"], group["eps"], group["weight_decay"]
    )
    if betas[0] == 0.0:
        raise ValueError(
            f"Invalid beta parameter at index 0: {group['betas'][0]}; {name} needs beta1 > 0 "
            "(eval() recovers the averaged weights x from y and z by dividing by beta1)"
        )
    for key in ("r", "weight_lr_power"):
        value = group[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"Invalid {key} value: {value!r}; expected a finite number >= 0")
        if value < 0:
            raise ValueError(f"Invalid {key} value: {value}; expected a finite number >= 0")
    if "warmup_steps" in group:
        steps = group["warmup_steps"]
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise ValueError(f"Invalid warmup_steps value: {steps!r}; expected a whole number >= 0")


class ScheduleFreeAdam(NoDifferentiableDefault, Optimizer):
    """What schedule-free AdamW and RAdam share: the y/z/x sequences, the weighting, `train()`/`eval()`.

    A subclass says how the learning rate of step `k + 1` is scaled (`_lr_factor`) and whether that step
    normalizes the gradient by Adam's denominator.
    """

    fused_devices = FUSED_DEVICES  # read by the registry to switch `fused` on automatically
    fused_dtypes = (torch.float32,)  # the reference keeps z and v in the parameter's dtype
    # GradScaler unscales and skips overflowing steps itself (see the module docstring).
    _step_supports_amp_scaling = False

    def _lr_factor(self, group: dict, step: int) -> tuple[float, bool]:
        """(factor on the group's lr, whether the gradient is Adam-normalized) for `step` (1-based)."""
        raise NotImplementedError

    def _defaults(
        self, lr, betas, eps, weight_decay, r, weight_lr_power, foreach, maximize, fused, **extra
    ) -> dict:
        name = type(self).__name__
        betas, eps, weight_decay = check_common_hyperparameters(lr, betas, eps, weight_decay)
        check_lr(lr, foreach, name)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            r=r,
            weight_lr_power=weight_lr_power,
            **extra,
            foreach=foreach,
            maximize=maximize,
            fused=fused,
            # Per-group running values, as the reference keeps them (its state dicts load here).
            k=0,
            train_mode=True,  # the reference starts in eval mode: see the module docstring
            weight_sum=0.0,
            lr_max=-1.0,
            scheduled_lr=0.0,
        )
        _check_schedule_free(defaults, name)
        return defaults

    def add_param_group(self, param_group: dict) -> None:
        # A group added after the others joins their mode (its parameters have no z yet: y = x).
        joins = bool(self.param_groups) and "train_mode" not in param_group
        mode = self.param_groups[0]["train_mode"] if self.param_groups else None
        super().add_param_group(param_group)
        with refused_group_removed(self) as group:
            check_param_dtypes(group["params"], type(self).__name__)
            _check_schedule_free(group, type(self).__name__)
            if joins:
                group["train_mode"] = mode
            group["fused"] = resolve_fused(type(self), group["fused"], group)

    def load_state_dict(self, state_dict: dict) -> None:
        # The groups' k, weight_sum, lr_max and train_mode come back with the state dict: the parameters
        # (restored beside it) hold y or x as it says.
        load_state_dict_keeping_dtypes(self, state_dict)

    @torch.no_grad()
    def eval(self) -> None:
        """Parameters to x, the averaged weights (what to evaluate, export or listen to)."""
        self._switch(train_mode=False)

    @torch.no_grad()
    def train(self) -> None:
        """Parameters to y, where gradients are taken (call before the training steps)."""
        self._switch(train_mode=True)

    def _switch(self, train_mode: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train_mode:
                continue
            beta1 = group["betas"][0]
            # y = (1 - beta1) z + beta1 x, so x = y + (1 - 1/beta1)(z - y) and y = x + (1 - beta1)(z - x).
            weight = 1 - beta1 if train_mode else 1 - 1 / beta1
            for p in group["params"]:
                state = self.state.get(p)
                if state and "z" in state:
                    real_view(p).lerp_(real_view(state["z"]).to(p.device), weight)
            group["train_mode"] = train_mode

    def _init_state(self, param: torch.Tensor) -> dict:
        """z (= the parameter: y = x = z at the start) and the second moment, on first use."""
        state = self.state[param]
        if "z" not in state:
            state["z"] = torch.clone(param, memory_format=torch.preserve_format).detach()
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step (in train mode); returns the closure's loss if a closure is given."""
        name = type(self).__name__
        if not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError(
                f"{name}.step() called in eval mode: call optimizer.train() before training steps and "
                "optimizer.eval() before evaluating (the schedule-free train()/eval() contract)"
            )
        loss = evaluate_closure(closure)
        for group, indexed in params_with_grad(self.param_groups, name):
            k = group["k"]
            beta1, beta2 = group["betas"]
            factor, adaptive = self._lr_factor(group, k + 1)
            lr = lr_value(group["lr"]) * factor
            lr_max = max(lr, group["lr_max"])
            weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
            weight_sum = group["weight_sum"] + weight
            ckp1 = weight / weight_sum if weight_sum != 0 else 0.0
            if indexed:
                self._step_group(group, indexed, lr, beta1, beta2, ckp1, 1 - beta2 ** (k + 1), adaptive)
            # The group's running values move once its tensors have: a refused fused step (its checks
            # come first) leaves the group as it was, and taken again is the same step.
            group.update(k=k + 1, scheduled_lr=lr, lr_max=lr_max, weight_sum=weight_sum)  # as the reference
        return loss

    def _step_group(self, group, indexed, lr, beta1, beta2, ckp1, bias_correction2, adaptive) -> None:
        states = [self._init_state(p) for _, p in indexed]
        schedule_free_adam(
            [real_view(p) for _, p in indexed],
            [real_view(p.grad) for _, p in indexed],
            [real_view(s["exp_avg_sq"]) for s in states],
            [real_view(s["z"]) for s in states],
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            ckp1=ckp1,
            bias_correction2=bias_correction2,
            adaptive=adaptive,
            maximize=group["maximize"],
            foreach=default_foreach(group["foreach"], group["lr"], len(indexed)),
            fused=group.get("fused") or False,
        )


class AdamWScheduleFree(ScheduleFreeAdam):
    """Schedule-free AdamW: no scheduler (pair it with a constant one), evaluate after `eval()`.

    Args:
        params: parameters or param groups.
        lr: learning rate (0.0025, the reference's default).
        betas: beta1 interpolates y between z and x (> 0), beta2 is Adam's second-moment decay
            ((0.9, 0.999)).
        eps: added to the denominator sqrt(v / (1 - beta2**k)) (1e-8).
        weight_decay: decoupled, taken at y: lr*wd*y joins the normalized gradient (0).
        warmup_steps: linear warm-up of lr over this many steps, inside the optimizer (0).
        r: the average weights step k by k**r (0: uniform).
        weight_lr_power: ... and by lr_max**weight_lr_power, the largest lr so far (2.0), so warm-up
            steps count less.
        foreach: the multi-tensor path (None: whenever there is more than one tensor); both paths
            compute the same update.
        maximize: maximize the objective (step along the gradient).
        fused: arvc's fused kernel (float32; C++ on CPU, built on first use, Triton on CUDA; see
            arvc.optim._fused). The registry switches it on where it can run; where it cannot be built,
            the foreach path runs instead, with one warning.
    """

    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = self._defaults(
            lr,
            betas,
            eps,
            weight_decay,
            r,
            weight_lr_power,
            foreach,
            maximize,
            fused,
            warmup_steps=warmup_steps,
        )
        super().__init__(params, defaults)

    def _lr_factor(self, group: dict, step: int) -> tuple[float, bool]:
        warmup_steps = group["warmup_steps"]
        return (step / warmup_steps if step <= warmup_steps else 1.0), True


def schedule_free_adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    zs: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    ckp1: float,
    bias_correction2: float,
    adaptive: bool,
    maximize: bool,
    foreach: bool = False,
    fused: bool = False,
) -> None:
    """One schedule-free step over a list of parameters (holding y); `fused`/`foreach` pick the body.

    `ckp1` is the new point's weight in the average x, `adaptive` whether the gradient is divided by
    Adam's denominator (RAdam's rectified start does without).
    """
    body = step_body(
        _single_tensor_schedule_free,
        _multi_tensor_schedule_free,
        _fused_schedule_free,
        use_fused=fused,
        foreach=foreach,
    )
    body(
        params,
        grads,
        exp_avg_sqs,
        zs,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        ckp1=ckp1,
        bias_correction2=bias_correction2,
        adaptive=adaptive,
        maximize=maximize,
    )


def _single_tensor_schedule_free(
    params,
    grads,
    exp_avg_sqs,
    zs,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    ckp1,
    bias_correction2,
    adaptive,
    maximize,
) -> None:
    """The readable reference: one parameter at a time."""
    for y, grad, exp_avg_sq, z in zip(params, grads, exp_avg_sqs, zs, strict=True):
        if maximize:
            grad = -grad
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if adaptive:
            denom = exp_avg_sq.div(bias_correction2).sqrt_().add_(eps)
            step = grad.div(denom)
        else:
            step = grad  # RAdam's start: the plain gradient (or no step at all: lr is 0)
        if weight_decay != 0:
            # Decoupled weight decay, taken at y (a new tensor: the caller's gradient stays as it was).
            step = step.add(y, alpha=weight_decay) if step is grad else step.add_(y, alpha=weight_decay)
        # y moves to the new y without x being formed: y <- lerp(y, z, ckp1) + lr*(beta1*(1-ckp1) - 1)*step
        y.lerp_(z, ckp1)
        y.add_(step, alpha=lr * (beta1 * (1 - ckp1) - 1))
        z.sub_(step, alpha=lr)


def _multi_tensor_schedule_free(
    params,
    grads,
    exp_avg_sqs,
    zs,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    ckp1,
    bias_correction2,
    adaptive,
    maximize,
) -> None:
    """The same update with torch._foreach_* ops, grouped by device and dtype (as torch.optim does)."""
    if not params:
        return
    for (device_y, device_grads, device_v, device_z), _ in group_tensors_by_device_and_dtype(
        [params, grads, exp_avg_sqs, zs]
    ).values():
        owned = maximize  # whether `updates` are new tensors (writable), not the caller's gradients
        updates = torch._foreach_neg(device_grads) if maximize else device_grads
        torch._foreach_mul_(device_v, beta2)
        torch._foreach_addcmul_(device_v, updates, updates, value=1 - beta2)
        if adaptive:
            denom = torch._foreach_div(device_v, bias_correction2)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, eps)
            if owned:
                torch._foreach_div_(updates, denom)
            else:
                updates = torch._foreach_div(updates, denom)
                owned = True
            del denom
        if weight_decay != 0:
            if owned:
                torch._foreach_add_(updates, device_y, alpha=weight_decay)
            else:
                updates = torch._foreach_add(updates, device_y, alpha=weight_decay)
        torch._foreach_lerp_(device_y, device_z, weight=ckp1)
        torch._foreach_add_(device_y, updates, alpha=lr * (beta1 * (1 - ckp1) - 1))
        torch._foreach_sub_(device_z, updates, alpha=lr)


def _fused_schedule_free(
    params,
    grads,
    exp_avg_sqs,
    zs,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    ckp1,
    bias_correction2,
    adaptive,
    maximize,
    grad_scale=None,
    found_inf=None,
) -> None:
    """The same update in one pass over all tensors: C++ on CPU (_fused_cpu/schedule_free.h), Triton on
    CUDA (_fused_triton/schedule_free.py)."""
    if not params:
        return
    run_kernel(
        fused_op("schedule_free_", params[0].device, grad_scale, found_inf),
        (
            params,
            grads,
            exp_avg_sqs,
            zs,
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            ckp1,
            bias_correction2,
            adaptive,
            maximize,
        ),
        params,
        exp_avg_sqs,
        zs,
    )
    mark_modified(params, exp_avg_sqs, zs)
