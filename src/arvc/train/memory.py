"""How much memory a training step needs, before training starts; and the batch size that fits.

RVC trainers find their batch size by running out of memory (RVC #656: "try batch size 2 first, if OOM …
1"), or worse, by not running out: a batch too large for a Windows GPU spills into shared memory and runs
3x slower (RVC #2137). arvc estimates the peak of one step from its parts:

- weights and gradients of G and D (their parameters, in the dtype they train in);
- optimizer state, as the registry measures it (`state_bytes_per_param`: the real buffers after a step;
  a schedule-free optimizer's z and second moment included);
- with `--ema`, the EMA of G's weights (one fp32 copy of G's parameters, arvc.train.weights);
- activations: the tensors autograd keeps for backward, counted (``saved_tensors_hooks``) during a probe
  forward of one item as long as the longest training piece — G's forward with D's phase on top (real and
  fake through D with D's parameters taking gradients: the larger of D's two phases) — and scaled by the
  batch size (nothing is shared between items).

Temporaries (a convolution's workspace, the allocator's rounding and cache) are not counted: the batch
that fits is chosen with a margin (`HEADROOM`). The probe runs the run's own models once, with the RNG
state forked, so training is unchanged by it.

The same probe weighs activation checkpointing (arvc.model.checkpointing): it notes which block saved each
tensor, so the activations with checkpointing are what is saved outside the blocks, plus the blocks'
inputs (kept for the recompute), plus the largest block's own (alive while backward recomputes it).
`plan_memory` then decides, from these and the free memory, the micro-batch, the accumulation and whether
to checkpoint: a batch that fits as it is is kept; one that does not gets checkpointing (`auto`) and, with
`--batch-size auto`, accumulation, rather than a batch that spills.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from arvc.config import RunConfig
from arvc.model import slice_segments
from arvc.model.checkpointing import checkpointed_blocks, set_checkpointing

__all__ = [
    "HEADROOM",
    "Activations",
    "MemoryEstimate",
    "MemoryPlan",
    "auto_batch_size",
    "estimate_memory",
    "free_memory",
    "plan_memory",
    "probe_activations",
]

HEADROOM = 0.8  # an automatic batch uses at most this share of the free memory
MAX_AUTO_BATCH = 64
GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    batch_size: int
    weights: int  # bytes
    gradients: int
    optimizer_state: int
    activations: int
    accumulate: int = 1  # micro-batches per step (the memory is one micro-batch's)
    checkpointing: bool = False
    ema: int = 0  # bytes of the EMA weights (--ema)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations + self.ema

    def describe(self) -> str:
        parts = (
            f"weights {self.weights / GIB:.2f}, gradients {self.gradients / GIB:.2f}, optimizer state "
            f"{self.optimizer_state / GIB:.2f}, "
            + (f"EMA weights {self.ema / GIB:.2f}, " if self.ema else "")
            + f"activations {self.activations / GIB:.2f}"
            + (" checkpointed" if self.checkpointing else "")
        )
        batch = f"batch {self.batch_size}" + (
            f" x {self.accumulate} accumulated" if self.accumulate > 1 else ""
        )
        return f"about {self.total / GIB:.2f} GiB at {batch} ({parts} GiB)"


@dataclass(frozen=True)
class Activations:
    """Bytes autograd keeps per item of the longest piece: as the models run, and with checkpointing."""

    plain: int
    checkpointed: int

    def per_item(self, checkpointing: bool) -> int:
        return self.checkpointed if checkpointing else self.plain


def _saved_bytes(run, exclude: set[int]) -> int:
    """Bytes of the distinct storages autograd saves for backward while `run()` executes (the graph is
    kept alive until it returns, so no storage is freed and reused under another tensor meanwhile)."""
    outside, _, inside = _saved_bytes_by_block(run, exclude, [])
    return outside + sum(inside)


def _saved_bytes_by_block(
    run, exclude: set[int], blocks: list[torch.nn.Module]
) -> tuple[int, int, list[int]]:
    """As `_saved_bytes`, split by who saved each storage first: (outside every block, the blocks' inputs
    not saved outside, [saved inside each block])."""
    seen: dict[int, tuple[int, int | None]] = {}  # storage -> (bytes, block that saved it first)
    inputs: dict[int, int] = {}
    active: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude and storage.data_ptr() not in seen:
            seen[storage.data_ptr()] = storage.nbytes(), active[-1] if active else None
        return tensor

    def enter(index: int):
        def hook(module, args) -> None:
            active.append(index)
            for arg in args:
                if isinstance(arg, torch.Tensor) and arg.untyped_storage().data_ptr() not in exclude:
                    inputs[arg.untyped_storage().data_ptr()] = arg.untyped_storage().nbytes()

        return hook

    def leave(*_) -> None:  # (returns None: a forward hook's result would replace the block's output)
        active.pop()

    handles = [block.register_forward_pre_hook(enter(i)) for i, block in enumerate(blocks)]
    handles += [block.register_forward_hook(leave) for block in blocks]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            run()
    finally:
        for handle in handles:
            handle.remove()
    outside = sum(size for size, owner in seen.values() if owner is None)
    inside = [0] * len(blocks)
    for size, owner in seen.values():
        if owner is not None:
            inside[owner] += size
    kept_inputs = sum(size for key, size in inputs.items() if key not in seen or seen[key][1] is not None)
    return outside, kept_inputs, inside


def probe_activations(
    cfg: RunConfig, net_g: torch.nn.Module, net_d: torch.nn.Module, frames: int, autocast
) -> Activations:
    """Bytes autograd saves for one item of `frames` frames in a training step, without and with
    activation checkpointing (see the module doc).

    `autocast` is the step's autocast context factory (precision); the models stay as they are."""
    d = cfg.data
    device = next(net_g.parameters()).device
    dtype = next(net_g.parameters()).dtype
    params = {p.untyped_storage().data_ptr() for m in (net_g, net_d) for p in m.parameters()}
    n_freq = d.filter_length // 2 + 1
    batch = (
        torch.randn(1, frames, d.feature_dim, device=device, dtype=dtype),
        torch.tensor([frames], device=device),
        torch.randint(1, 255, (1, frames), device=device),
        torch.full((1, frames), 200.0, device=device),
        torch.randn(1, n_freq, frames, device=device, dtype=dtype).abs(),
        torch.tensor([frames], device=device),
        torch.zeros(1, dtype=torch.long, device=device),
    )
    wave = torch.randn(1, 1, frames * d.hop_length, device=device, dtype=dtype)

    def step() -> None:
        with autocast():
            y_hat, ids_slice, *_ = net_g(*batch)
            real = slice_segments(wave, ids_slice * d.hop_length, d.segment_size).to(y_hat.dtype)
            net_d(
                real, y_hat
            )  # D's phase with y_hat attached: the graph of both phases at once, an upper bound

    devices = [device.index or 0] if device.type == "cuda" else []
    was = net_d.checkpointing
    set_checkpointing(net_g, net_d, False)  # every saved tensor seen, and where it was saved
    try:
        with torch.random.fork_rng(devices=devices):
            outside, inputs, inside = _saved_bytes_by_block(step, params, checkpointed_blocks(net_g, net_d))
    finally:
        set_checkpointing(net_g, net_d, was)
    return Activations(outside + sum(inside), outside + inputs + max(inside, default=0))


def estimate_memory(
    net_g: torch.nn.Module,
    net_d: torch.nn.Module,
    state_bytes_per_param: float,
    activations_per_item: int,
    batch_size: int,
    accumulate: int = 1,
    checkpointing: bool = False,
    ema: bool = False,
) -> MemoryEstimate:
    """The peak of one step at micro-batch `batch_size` (`activations_per_item` as checkpointed or not);
    `ema`: the run keeps an EMA of G's weights (one fp32 copy of G's parameters)."""
    params = [p for m in (net_g, net_d) for p in m.parameters()]
    weights = sum(p.numel() * p.element_size() for p in params)
    numel = sum(p.numel() for p in params)
    activations = activations_per_item * batch_size
    state = int(state_bytes_per_param * numel)
    averaged = 4 * sum(p.numel() for p in net_g.parameters()) if ema else 0
    return MemoryEstimate(
        batch_size, weights, weights, state, activations, accumulate, checkpointing, averaged
    )


def free_memory(device: torch.device) -> tuple[int | None, str]:
    """Free bytes on `device` and what they are ("GPU memory" / "RAM"); None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), "free GPU memory"
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as handle:  # Linux: MemAvailable counts reclaimable cache too
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024, "available RAM"
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free RAM"
        except (ValueError, OSError, AttributeError):
            return None, "RAM"
    return None, f"{device.type} memory"


def auto_batch_size(fixed: int, per_item: int, free: int, limit: int) -> int:
    """The largest batch (1..limit) whose estimate, `fixed + per_item * batch`, stays within HEADROOM of
    `free`; 0 when not even one item fits."""
    room = HEADROOM * free - fixed
    if room < per_item:
        return 0
    return int(min(limit, room // max(per_item, 1)))


_ON = {True: "on", False: "off"}


@dataclass(frozen=True)
class MemoryPlan:
    """How a step fits: its micro-batch, the accumulation, checkpointing; and why, for the log."""

    batch_size: int  # 0: not even one item fits
    accumulate: int
    checkpointing: bool
    reason: str


def plan_memory(
    fixed: int,
    activations: Activations,
    free: int | None,
    what: str,
    *,
    batch: int | None,
    accumulate: int,
    mode: str,
    target: int,
    limit: int,
) -> MemoryPlan:
    """Choose how a step fits within HEADROOM of `free` bytes of `what` (None: unknown; nothing changes).

    `fixed` is the weights, gradients and optimizer state; `mode` the `train.checkpointing` asked for
    ("auto": on only where the batch does not fit otherwise). `batch`, the micro-batch asked for, is kept
    (with `accumulate`). `batch=None` is `--batch-size auto`: the largest micro-batch that fits, up to
    `limit` items per step; where that is below `target` items (the config's batch x accumulate), auto
    checkpointing is switched on if more items then fit, and (`accumulate` 1) the step accumulates
    N = ceil(target / fit) micro-batches of ceil(target / N) items -- the update of a batch of `target`
    instead of a batch that spills or a smaller one -- never more than `limit` items per step (where the
    dataset is smaller than `target`: as many items as it has, in equal micro-batches)."""
    room = None if free is None else HEADROOM * free
    size = lambda items, on: (fixed + activations.per_item(on) * items) / GIB  # noqa: E731
    where = f"{round(HEADROOM * 100)}% of the {free / GIB:.2f} GiB {what}" if free is not None else what
    if batch is not None:
        if mode != "auto" or room is None or fixed + activations.plain * batch <= room:
            on = mode == "on"
            return MemoryPlan(
                batch, accumulate, on, f"activation checkpointing {'on' if on else 'off'} ({mode})"
            )
        return MemoryPlan(
            batch, accumulate, True,
            f"activation checkpointing on (auto): batch {batch} needs about {size(batch, False):.2f} GiB, "
            f"more than {where}; checkpointed about {size(batch, True):.2f} GiB",
        )  # fmt: skip
    target = max(1, min(target, limit))
    per_step = max(1, limit // accumulate)
    plain = 0 if mode == "on" else auto_batch_size(fixed, activations.plain, free, per_step)
    checkpointed = 0 if mode == "off" else auto_batch_size(fixed, activations.checkpointed, free, per_step)
    if mode == "on" or (mode == "auto" and plain * accumulate < target and checkpointed > plain):
        fit, on = checkpointed, True
    else:
        fit, on = plain, False
    if fit == 0:
        return MemoryPlan(0, accumulate, on, f"not even batch 1 fits in {where}")
    why = f"the largest up to {per_step} that keeps a step within {where}"
    if on and mode == "auto":
        why += f"; activation checkpointing on, since without it at most {plain} fit"
    if accumulate > 1 or fit >= target:
        return MemoryPlan(fit, accumulate, on, why)
    n = math.ceil(target / fit)
    micro = math.ceil(target / n)
    if micro * n > limit:  # more items per step than the dataset has (one near or below the batch asked)
        # the most items up to `limit` in equal micro-batches of at most `fit`; the fewer, the faster
        micro, n = max(
            ((min(fit, limit // k), k) for k in range(1, limit + 1)), key=lambda p: (p[0] * p[1], -p[1])
        )
    why += (
        f"; a batch of {target} would not fit (it would spill or run out), so {n} micro-batches of {micro} "
        f"are accumulated per step: the update of a batch of {micro * n}"
    )
    return MemoryPlan(micro, n, on, why)
