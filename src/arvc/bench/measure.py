"""What the benchmark measures besides step time: state bytes, the path taken, bandwidth, the machine.

State bytes are read from the optimizer's real buffers, not from a table: bitsandbytes keeps quantized
moments plus absmax/qmap tensors (the qmap shared by every parameter), torchao keeps tensor subclasses
whose storage lives in inner tensors, so both are unpacked, and shared storage is counted once.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Iterable

import torch

__all__ = [
    "copy_bandwidth",
    "describe_path",
    "observed_path",
    "machine_info",
    "rss_bytes",
    "state_bytes",
    "synchronize",
    "timed",
]


def _leaf_tensors(value) -> Iterable[torch.Tensor]:
    """Every plain tensor holding storage inside a state value (nested containers, tensor subclasses)."""
    if isinstance(value, torch.Tensor):
        flatten = getattr(type(value), "__tensor_flatten__", None)
        if flatten is not None and type(value) is not torch.Tensor and type(value) is not torch.nn.Parameter:
            names, _ = value.__tensor_flatten__()
            for name in names:
                yield from _leaf_tensors(getattr(value, name))
        else:
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaf_tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaf_tensors(item)


def state_bytes(optimizer: torch.optim.Optimizer, exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of every tensor in `optimizer.state`, each storage counted once.

    Tensors sharing storage with `exclude` (the parameters: some optimizers keep a reference to their
    param group in the state) are not counted.
    """
    seen: set[tuple[str, int]] = {(str(t.device), t.untyped_storage().data_ptr()) for t in exclude}
    total = 0
    for per_param in optimizer.state.values():
        for tensor in _leaf_tensors(per_param):
            storage = tensor.untyped_storage()
            key = (str(tensor.device), storage.data_ptr())
            if storage.data_ptr() != 0 and key in seen:
                continue
            seen.add(key)
            total += storage.nbytes()
    return total


def describe_path(optimizer: torch.optim.Optimizer, hint: str | None = None) -> str | None:
    """The path a step takes as the optimizer's own settings declare it (fused > foreach > hint).

    None when the settings leave it to the class (`foreach=None` in a non-torch class): then the runner
    watches a step (`observed_path`). For torch's own classes torch is asked what None resolves to.
    """
    groups = optimizer.param_groups or [optimizer.defaults]
    for key in ("fused", "triton", "foreach"):
        values = [group.get(key, optimizer.defaults.get(key)) for group in groups]
        chosen = next((v for v in values if v not in (None, False)), None)
        if chosen is not None:
            return key if chosen is True else f"{key}={chosen}"
    if hint:
        return hint
    if "foreach" in optimizer.defaults or "fused" in optimizer.defaults:
        if type(optimizer).__module__.startswith("torch.optim"):
            from torch.optim.optimizer import _default_to_fused_or_foreach

            params = [p for group in groups for p in group["params"]]
            _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
            return "foreach (torch default)" if foreach else "for-loop (torch default)"
        return None
    return "for-loop"


def observed_path(step) -> str:
    """Run `step` once and name the path from the aten ops it dispatched: fused kernels, _foreach_ ops,
    per-tensor ops, or none at all (compiled code that bypasses the dispatcher)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names: set[str] = set()

    class _Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.add(func.__name__)
            return func(*args, **(kwargs or {}))

    with _Recorder():
        step()
    if any(name.startswith("_fused_") for name in names):
        return "fused (observed)"
    if any(name.startswith("_foreach_") for name in names):
        return "foreach (observed)"
    return "for-loop (observed)" if names else "compiled (observed: no eager ops)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds one call of fn takes, with the device synchronized on both sides."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def copy_bandwidth(device: torch.device, nbytes: int = 128 << 20, repeats: int = 5) -> float:
    """Bytes/second of `dst.copy_(src)` counting read + write: a practical memory-bandwidth ceiling."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages once
    times = [timed(lambda: dst.copy_(src), device) for _ in range(repeats)]
    return 2 * nbytes / statistics.median(times)


def rss_bytes() -> int | None:
    """The process's current resident set size (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    """1/5/15-minute load: above the CPU count, other processes compete and timings get noisy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on; goes into the JSON and the docs."""
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_average": _load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
