"""How much memory a training step needs, before training starts; and the batch size that fits.

RVC trainers find their batch size by running out of memory (RVC #656: "try batch size 2 first, if OOM …
1"), or worse, by not running out: a batch too large for a Windows GPU spills into shared memory and runs
3x slower (RVC #2137). arvc estimates the peak of one step from its parts:

- weights and gradients of G and D (their parameters, in the dtype they train in);
- optimizer state, as the registry measures it (`state_bytes_per_param`: the real buffers after a step);
- activations: the tensors autograd keeps for backward, counted (``saved_tensors_hooks``) during a probe
  forward of one item as long as the longest training piece — G's forward with D's phase on top (real and
  fake through D with D's parameters taking gradients: the larger of D's two phases) — and scaled by the
  batch size (nothing is shared between items).

Temporaries (a convolution's workspace, the allocator's rounding and cache) are not counted: the batch
that fits is chosen with a margin (`HEADROOM`). The probe runs the run's own models once, with the RNG
state forked, so training is unchanged by it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from arvc.config import RunConfig
from arvc.model import slice_segments

__all__ = [
    "HEADROOM",
    "MemoryEstimate",
    "auto_batch_size",
    "estimate_memory",
    "free_memory",
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

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations

    def describe(self) -> str:
        parts = (
            f"weights {self.weights / GIB:.2f}, gradients {self.gradients / GIB:.2f}, optimizer state "
            f"{self.optimizer_state / GIB:.2f}, activations {self.activations / GIB:.2f}"
        )
        return f"about {self.total / GIB:.2f} GiB at batch {self.batch_size} ({parts} GiB)"


def _saved_bytes(run, exclude: set[int]) -> int:
    """Bytes of the distinct storages autograd saves for backward while `run()` executes (the graph is
    kept alive until it returns, so no storage is freed and reused under another tensor meanwhile)."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(seen.values())


def probe_activations(
    cfg: RunConfig, net_g: torch.nn.Module, net_d: torch.nn.Module, frames: int, autocast
) -> int:
    """Bytes autograd saves for one item of `frames` frames in a training step (see the module doc).

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
    with torch.random.fork_rng(devices=devices):
        return _saved_bytes(step, params)


def estimate_memory(
    net_g: torch.nn.Module,
    net_d: torch.nn.Module,
    state_bytes_per_param: float,
    activations_per_item: int,
    batch_size: int,
) -> MemoryEstimate:
    params = [p for m in (net_g, net_d) for p in m.parameters()]
    weights = sum(p.numel() * p.element_size() for p in params)
    numel = sum(p.numel() for p in params)
    return MemoryEstimate(
        batch_size, weights, weights, int(state_bytes_per_param * numel), activations_per_item * batch_size
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
