"""Loading optimizer state: dtypes kept as saved, numeric steps converted, foreign state adapted.

State dicts come from other places than this class: older torch, adabelief-pytorch and pytorch_optimizer
write `step` as a Python number; AdaBelief and AdaBeliefV2 share every buffer but AMSGrad's maximum.
Everything here runs once, at load, so `step()` only ever sees the state it creates itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch


def step_tensor(value) -> torch.Tensor:
    """A step counter as arvc keeps it: a 0-dim float32 CPU tensor (torch's own convention)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Invalid optimizer state: step has {value.numel()} elements, expected one")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"Invalid optimizer state: step={value!r}; expected a non-negative number")
    return torch.tensor(float(value), dtype=torch.float32)


@contextlib.contextmanager
def keeping_paths(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Around a `load_state_dict`: every group keeps this process's `foreach`/`fused`.

    They say how this process runs the math, not what the math is: a checkpoint written with the fused
    kernel resumes on a machine without a compiler, and one written on the foreach path resumes fused
    (where the optimizer was built fused, GradScaler hands it the scale, and it must go on taking it).
    """
    paths = [{k: g[k] for k in ("foreach", "fused") if k in g} for g in optimizer.param_groups]
    yield
    for group, path in zip(optimizer.param_groups, paths, strict=True):
        group.update(path)


class NoDifferentiableDefault:
    """Mixin for arvc's own optimizer classes, which take no `differentiable` argument.

    torch's `Optimizer.__setstate__` (which `load_state_dict`, deepcopy and unpickling run) adds
    `differentiable=False` to every optimizer's defaults, and `add_param_group` and a load then copy it
    into the param groups: an optimizer that loaded a state dict wrote one its original did not (torch's
    test_state_dict_deterministic). Here the defaults stay those the constructor set.
    """

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.defaults.pop("differentiable", None)


def parameter_states(optimizer: torch.optim.Optimizer) -> Iterator[tuple[torch.Tensor, dict]]:
    """(parameter, its state) for every parameter with state. `optimizer.state` may hold other entries:
    torch lets hooks put anything there (its load_state_dict hook tests add booleans by name)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state:
                yield p, state


def load_state_dict_keeping_dtypes(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """`Optimizer.load_state_dict`, but every state tensor keeps the dtype it was saved with.

    torch casts floating state to its parameter's dtype on load (pytorch#43706): an fp32 moment of a
    bf16 parameter would silently become bf16 on resume. Here the saved tensors are put back as they
    were (moved to the parameter's device), so a resumed run continues bit for bit. A numeric `step`
    becomes a step tensor, and hyperparameters a foreign state dict lacks take this optimizer's defaults.
    """
    with keeping_paths(optimizer):
        torch.optim.Optimizer.load_state_dict(optimizer, state_dict)
    for group in optimizer.param_groups:
        for key, value in optimizer.defaults.items():
            group.setdefault(key, value)
    saved_ids = [pid for group in state_dict["param_groups"] for pid in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for pid, p in zip(saved_ids, params, strict=True):
        saved = state_dict["state"].get(pid)
        if not saved:
            continue
        state = optimizer.state[p]
        for key, value in saved.items():
            if key == "step":
                state["step"] = step_tensor(value)
            elif isinstance(value, torch.Tensor):
                state[key] = value.to(device=p.device, copy=True)


def place_steps(optimizer: torch.optim.Optimizer, on_device: Callable[[dict], bool]) -> None:
    """After a load: every `step` tensor where this process's path keeps it, on its parameter's device
    for the groups `on_device` names (torch's fused and capturable paths), else on the CPU."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                optimizer.state[p]["step"] = step.to(p.device if on_device(group) else "cpu")
