"""Which weights of the generator a run evaluates and exports, and the EMA that `--ema DECAY` keeps.

A run trains one set of weights (the *live* ones, in G) and may evaluate another:

* a schedule-free optimizer (`arvc.optim.registry.has_weight_modes`: the `train()`/`eval()` contract of
  the `schedulefree` package) trains at y and evaluates at the average x: the model's parameters hold y
  after `optimizer.train()`, x after `optimizer.eval()`;
* `--ema DECAY` (`train.ema`) keeps an exponential moving average of G's parameters, in fp32, updated after
  every G step with torch's own `torch.optim.swa_utils.get_ema_multi_avg_fn` (AveragedModel's functional
  form: the first update copies, each later one lerps by 1 - decay). G's weight norm keeps weight_g and
  weight_v as parameters, which are averaged as AveragedModel would average them; G has no buffers.

`evaluation_weights` is the one place that puts the weights to evaluate into G (validation, listening
samples, the best-model export, the end-of-run export, `arvc compare`'s evaluation) and afterwards puts
the live weights back bit for bit, so evaluating never changes training. Under --zero a schedule-free
optimizer's z is sharded: each rank switches the parameters of its own shard and the owners broadcast
theirs (`arvc.train.distributed.share_shards`), so every rank holds the whole x, as one process would;
entering it is then collective (every rank does, also where rank 0 alone writes). A checkpoint holds the
live weights with the optimizer state (a resume continues bit for bit) and, under `averaged`, the
evaluated ones (`averaged_record`), which `arvc export` and the web UI's Models tab take by default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from arvc.optim import get_spec
from arvc.optim.registry import has_weight_modes
from arvc.train.distributed import local_optimizer, share_shards

__all__ = [
    "AVERAGED",
    "WEIGHTS",
    "WeightAverage",
    "averaged_kind",
    "averaged_record",
    "averaging_conflict",
    "evaluation_weights",
    "set_train_mode",
]

AVERAGED = "averaged"  # the checkpoint key of the evaluated weights (a run that averages)
WEIGHTS = ("averaged", "live")  # what `arvc export --weights` may take


class WeightAverage:
    """An exponential moving average of a module's parameters, kept in fp32 on their device."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.names = [name for name, _ in module.named_parameters()]
        self.weights = [p.detach().to(torch.float32, copy=True) for p in module.parameters()]
        self.updates = 0  # AveragedModel's n_averaged
        self._average = get_ema_multi_avg_fn(self.decay)

    def update(self, module: torch.nn.Module) -> None:
        """After an optimizer step: average the module's parameters in (the first update copies them)."""
        current = [p.detach().to(torch.float32) for p in module.parameters()]
        with torch.no_grad():
            if self.updates == 0:
                torch._foreach_copy_(self.weights, current)
            else:
                self._average(self.weights, current, self.updates)
        self.updates += 1

    def bytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in self.weights)

    def state_dict(self) -> dict:
        """decay, updates and the averaged parameters by name ("generator")."""
        return {
            "decay": self.decay,
            "updates": self.updates,
            "generator": {name: w.clone() for name, w in zip(self.names, self.weights, strict=True)},
        }

    def load_state_dict(self, state: dict) -> None:
        saved = state["generator"]
        if not set(self.names) <= set(saved):
            raise ValueError("the checkpoint's EMA weights do not match the generator's parameters")
        with torch.no_grad():
            for name, mine in zip(self.names, self.weights, strict=True):
                mine.copy_(saved[name])
        self.updates = int(state["updates"])


def _has_weight_modes(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer (under --zero: the one over this rank's shard) keeps two sets of weights."""
    return has_weight_modes(local_optimizer(optimizer))


def _switch(optimizer: torch.optim.Optimizer, train: bool) -> None:
    """A two-weight optimizer's parameters to y (`train`) or x: its `train()`/`eval()`; under --zero each
    rank's on its own shard (only it holds that shard's z), then the owners' parameters are broadcast."""
    local = local_optimizer(optimizer)
    if train:
        local.train()
    else:
        local.eval()
    share_shards(optimizer)


def set_train_mode(*optimizers) -> None:
    """Put two-weight (schedule-free) optimizers in train mode: their `step` needs it, and the model's
    parameters then hold the points they train at (y). Collective under --zero."""
    for optimizer in optimizers:
        if _has_weight_modes(optimizer):
            _switch(optimizer, train=True)


@contextlib.contextmanager
def evaluation_weights(
    net_g: torch.nn.Module, optim_g: torch.optim.Optimizer, average: WeightAverage | None = None
) -> Iterator[None]:
    """G holds the weights to evaluate for the duration: a schedule-free optimizer's x (`optim_g.eval()`),
    or the EMA (`average`); with neither, the live weights. Afterwards G holds exactly the live weights
    again (copied back, not recomputed: `train()` after `eval()` would round differently). Under --zero
    with a schedule-free optimizer every rank must enter it (x is gathered from every shard)."""
    modes = _has_weight_modes(optim_g)
    if not modes and average is None:
        yield
        return
    params = list(net_g.parameters())
    live = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            if modes:
                _switch(optim_g, train=False)
            else:
                torch._foreach_copy_(params, average.weights)
        yield
    finally:
        with torch.no_grad():
            if modes:
                _switch(optim_g, train=True)
            torch._foreach_copy_(params, live)


def averaged_kind(optim_g: torch.optim.Optimizer, average: WeightAverage | None) -> str | None:
    """Which averaged weights `evaluation_weights` puts into G: "ema", "schedule-free", or None (the live
    ones). The checkpoint's `averaged` record and the exports' info say it."""
    if average is not None:
        return "ema"
    return "schedule-free" if _has_weight_modes(optim_g) else None


def averaged_record(
    net_g: torch.nn.Module, optim_g: torch.optim.Optimizer, average: WeightAverage | None
) -> dict | None:
    """What a checkpoint keeps under AVERAGED: the weights `evaluation_weights` puts into G (a state dict
    of G, as `arvc export` reads it) and what they are; for an EMA also its state, for the resume. None for
    a run that does not average (its live weights are the evaluated ones)."""
    kind = averaged_kind(optim_g, average)
    if kind == "ema":
        state = average.state_dict()
        weights = {**net_g.state_dict(), **state["generator"]}  # (buffers, if G had any: the live ones)
        return {"kind": kind, **state, "generator": weights}
    if kind == "schedule-free":
        with evaluation_weights(net_g, optim_g):
            weights = {name: tensor.clone() for name, tensor in net_g.state_dict().items()}
        return {"kind": kind, "generator": weights}
    return None


def averaging_conflict(optimizer: str, ema: float | None, use_8bit: bool = False) -> str | None:
    """Why these settings cannot train together (None: they can). One rule for `arvc train`, the web UI
    and the Python API, checked before any work."""
    spec = get_spec(optimizer)
    if not spec.schedule_free or use_8bit:  # (--use-8bit trains bitsandbytes' AdamW8bit instead)
        return None
    if ema is not None:
        return (
            f"--ema {ema:g} with {spec.name}: a schedule-free optimizer already evaluates an average of its "
            "iterates (its x), an EMA on top would average the averaged weights; drop --ema, or choose "
            "another --optimizer (e.g. AdamW) for an EMA"
        )
    return None
