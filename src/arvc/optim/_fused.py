"""The fused paths: arvc's own C++ kernels for CPU tensors (_fused_cpu/), compiled once on first use and
cached, and its Triton kernels for CUDA tensors (_fused_triton/), with the same ops and semantics.

Why compiled here and not shipped: arvc is a pure-Python wheel; the kernels are a few headers of C++
(_fused_cpu/) that torch's extension builder turns into a shared library in under a minute with the
machine's C++ compiler, cached under TORCH_EXTENSIONS_DIR (~/.cache/torch_extensions) so later runs only
load it. Where that is impossible (no compiler, no ninja, unsupported platform) the optimizers fall back
to their foreach path with one warning that says why; nothing else changes. On CUDA the kernels need
triton (it comes with torch's CUDA wheels); without it, the same fallback and warning. And a GPU kernel
is checked on first use on each kind of GPU (arvc.optim._fused_probe: a small probe beside the foreach
path, its verdict cached on disk); one that fails it gives the same fallback, with one warning saying
what failed.

Here: the one rule for "can this group run fused" (`fused_refusal`, asked by the registry and by
`resolve_fused`), loading the kernels, and the op (`fused_op`) a step runs; the ops themselves are the
rows of arvc.optim._fused_ops.FUSED_OPS.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.resources
import logging
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from arvc.optim import _fused_cpu_steps
from arvc.optim._checks import parse_dtype, real_dtype, unscaled
from arvc.optim._fused_args import cpp_header
from arvc.optim._fused_ops import FUSED_OPS
from arvc.optim._rounding import is_dense

__all__ = [
    "AmpScaling",
    "FUSED_DEVICES",
    "FUSED_DTYPES",
    "FUSED_OPS",
    "FusedUnavailable",
    "amp_step",
    "fused_devices_of",
    "fused_kernels",
    "fused_op",
    "fused_refusal",
    "kernel_seed",
    "mark_modified",
    "relayout_state",
    "resolve_fused",
    "run_kernel",
]

logger = logging.getLogger(__name__)

FUSED_DEVICES = ("cpu", "cuda")
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"]
_GENERATED_HEADER = "scalars.h"  # written into the build folder from arvc.optim._fused_args.cpp_header


class FusedUnavailable(RuntimeError):
    """The fused kernels cannot be built or loaded on this machine; the message says why."""


_lock = threading.Lock()
_loaded = None  # torch.ops.arvc_fused once loaded
_failure: str | None = None  # why loading failed (remembered: we try, and warn, only once)
builds = 0  # how many times this process compiled or loaded the extension (tests check it is <= 1)


def _cpu_flags() -> tuple[list[str], str]:
    """-march=native, and the CPU's feature flags to key the cache with (a cached build must not move
    to another CPU); no flags where the CPU cannot be named."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return [], ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            features = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return [], ""
    return (["-march=native"], features) if features else ([], "")


def _cache_key(texts: list[tuple[str, str]], flags: list[str], cpu_features: str, source_dir: Path) -> str:
    """The build folder's key: kernel sources, flags, CPU, torch, and *which install* builds them.

    torch's build.ninja holds the absolute source and include paths of the install that wrote it, so two
    installs (two clones, two venvs) sharing one folder would each see the other's paths and rebuild every
    time; keyed by the source folder and the interpreter prefix, each install keeps its own build."""
    key_parts = [name + text for name, text in texts if name.endswith((".h", ".cpp"))]
    install = [str(Path(source_dir).resolve()), sys.prefix]
    return hashlib.sha256(
        "\n".join([*key_parts, *flags, cpu_features, torch.__version__, *install]).encode()
    ).hexdigest()[:12]


def _build():
    from torch.utils import cpp_extension

    sources = importlib.resources.files("arvc.optim") / "_fused_cpu"
    texts = [(f.name, f.read_text()) for f in sorted(sources.iterdir(), key=lambda f: f.name)]
    generated = cpp_header()  # the scalar tables' structs, from the layouts the Triton kernels read too
    cpu_flags, cpu_features = _cpu_flags()
    flags = _FLAGS + cpu_flags
    key = _cache_key([*texts, (_GENERATED_HEADER, generated)], flags, cpu_features, Path(str(sources)))
    started = time.perf_counter()
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())
    build_directory = root / f"arvc_fused_cpu_{key}"
    build_directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(build_directory), importlib.resources.as_file(sources) as folder:
        header = build_directory / _GENERATED_HEADER
        if not header.exists() or header.read_text() != generated:
            header.write_text(generated)  # under the build lock; keyed above, so the same text every time
        if not any(build_directory.glob("*.so")):
            logger.info("building arvc's fused CPU optimizer kernels (first use here; cached after)")
        cpp_extension.load(
            name=f"arvc_fused_cpu_{key}",
            sources=[str(folder / "fused_cpu.cpp")],
            extra_include_paths=[str(folder), str(build_directory)],
            build_directory=str(build_directory),
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    logger.info("arvc fused CPU kernels ready (%.1f s, %s)", time.perf_counter() - started, build_directory)
    _register_fakes()
    return torch.ops.arvc_fused


def _no_output(*args, **kwargs) -> None:
    """Fake (meta) implementation of the in-place kernels: they return nothing and their schemas say
    which inputs they write, which is all torch.compile needs to trace a step through them."""
    return None


def _register_fakes() -> None:
    for op in FUSED_OPS:
        torch.library.register_fake(f"arvc_fused::{op}")(_no_output)


@contextlib.contextmanager
def _exclusive(build_directory: Path):
    """One arvc process at a time builds or loads in `build_directory`.

    torch's own build lock is a plain file it waits on forever; one left by a build that was killed
    (Ctrl-C during the first run) would hang every later run. arvc holds an OS lock (flock, released by
    the kernel when its holder dies) around torch's; whoever holds it knows any torch lock file it finds
    is stale and removes it. Without flock (Windows) a torch lock older than any real build is removed.
    """
    torch_lock = build_directory / "lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        _remove_stale_lock(torch_lock)
        yield
        return
    with open(build_directory / "arvc.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            if torch_lock.exists():
                logger.warning("removing a build lock left by an interrupted build: %s", torch_lock)
                torch_lock.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


_STALE_LOCK_SECONDS = 600  # a build takes seconds to a few minutes; an older lock was left by a killed build


def _remove_stale_lock(lock: Path) -> None:
    """Without flock: a torch build lock older than any real build was left by an interrupted one."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > _STALE_LOCK_SECONDS:
        logger.warning("removing a stale build lock %s (%.0f s old, left by an interrupted build)", lock, age)
        lock.unlink(missing_ok=True)


def fused_kernels():
    """The loaded kernels (torch.ops.arvc_fused), building them on first use; FusedUnavailable if not."""
    global _loaded, _failure, builds
    with _lock:
        if _loaded is not None:
            return _loaded
        if _failure is not None:
            raise FusedUnavailable(_failure)
        builds += 1
        try:
            _loaded = _build()
        except Exception as error:  # compiler missing, ninja missing, build error: all mean "not here"
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            _failure = (
                f"arvc's fused CPU kernels could not be built ({type(error).__name__}: {first_line}). "
                "They need a C++ compiler (g++/clang++) and ninja (pip install ninja)."
            )
            raise FusedUnavailable(_failure) from error
        return _loaded


def _uses_triton(device) -> bool:
    """Whether tensors on `device` step through the Triton kernels (CUDA) rather than the C++ ones (CPU).
    The tests point it at CPU tensors under TRITON_INTERPRET=1 to run the Triton path without a GPU."""
    return torch.device(device).type == "cuda"


def triton_kernels():
    """arvc.optim._fused_triton (the GPU ops), imported on first use; FusedUnavailable without triton."""
    try:
        import arvc.optim._fused_triton as kernels
    except ImportError as error:
        raise FusedUnavailable(
            f"arvc's fused GPU kernels need triton, which could not be imported ({error}). It comes with "
            "torch's CUDA wheels; otherwise: pip install 'arvc[gpu]'."
        ) from error
    return kernels


def fused_op(name: str, device, grad_scale=None, found_inf=None):
    """The fused step `name` (a row of FUSED_OPS) for tensors on `device`: the C++ op on CPU (through
    arvc.optim._fused_cpu_steps), the Triton one on CUDA; both check their arguments and compute the
    step's scalars with arvc.optim._fused_args before their kernel runs. With `grad_scale` the gradients
    are divided by it first (GradScaler's scale: inside the Triton kernel, as torch's fused Adam; on the
    CPU, into a copy); a set `found_inf` (Triton only, a device tensor the kernel reads; see amp_step)
    skips the step."""
    if _uses_triton(device):
        kernel = getattr(triton_kernels(), name)
        if grad_scale is None and found_inf is None:
            return kernel
        return functools.partial(kernel, grad_scale=grad_scale, found_inf=found_inf)
    if found_inf is not None:
        raise RuntimeError("arvc fused step: found_inf is read on the host for CPU kernels (amp_step)")
    fused_kernels()
    kernel = getattr(_fused_cpu_steps, name)
    return kernel if grad_scale is None else unscaled(kernel, grad_scale)


def amp_step(optimizer) -> tuple[bool, float | torch.Tensor | None, torch.Tensor | None]:
    """(skip, grad_scale, found_inf) from what GradScaler hands an optimizer whose
    `_step_supports_amp_scaling` is true.

    On the Triton path (every group fused on a GPU) both stay tensors on the device and go to the kernel,
    which divides by the scale and writes nothing when the flag is set: no host read holds up the launch.
    Elsewhere they are read here: skip the whole step (no counter moves) when inf/NaN gradients were found,
    else divide the gradients by `grad_scale` (None: unscaled already, e.g. after `scaler.unscale_`)."""
    found_inf = getattr(optimizer, "found_inf", None)
    grad_scale = getattr(optimizer, "grad_scale", None)
    if found_inf is None and grad_scale is None:
        return False, None, None
    groups = [group for group in optimizer.param_groups if group["params"]]
    if groups and all(group.get("fused") and _uses_triton(group["params"][0].device) for group in groups):
        return False, grad_scale, found_inf
    if found_inf is not None and float(found_inf) != 0.0:
        return True, None, None
    return False, None if grad_scale is None else float(grad_scale), None


class AmpScaling:
    """Mixin: GradScaler gives a fused optimizer its scale and overflow flag instead of unscaling the
    gradients in a pass of its own (torch's fused Adam does the same); true once every group is fused."""

    @property
    def _step_supports_amp_scaling(self) -> bool:
        return bool(self.param_groups) and all(group.get("fused") for group in self.param_groups)


_warned = False


def fused_devices_of(cls: type) -> tuple[str, ...]:
    """Device types with a fused kernel for `cls`: its own `fused_devices`, else torch's list."""
    own = getattr(cls, "fused_devices", None)
    if own is not None:
        return tuple(own)
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        return tuple(_get_fused_kernels_supported_devices())
    except ImportError:  # pragma: no cover - older/newer torch without the helper
        return ("cuda", "cpu")


def _dtype_names(dtypes, last: str = ", ") -> str:
    names = [str(d).removeprefix("torch.") for d in dtypes]
    return ", ".join(names[:-1]) + last + names[-1] if len(names) > 1 else "".join(names)


def fused_refusal(cls: type, params: Iterable = (), settings: Mapping[str, Any] | None = None):
    """Why `cls`'s fused path cannot step `params` with the group settings `settings` (None: it can).

    The one rule for "can this group run fused" (torch's `_default_to_fused_or_foreach` is the model):
    the registry asks it before switching `fused` on, and `resolve_fused` raises what it returns when
    `fused=True` was asked for. `params` are tensors, or (device type, dtype) pairs where there are none
    yet (the registry's pure check). Returns the error `fused=True` raises, naming what to do instead:

    * settings: capturable or differentiable, or a state buffer dtype (`*_dtype`) outside the class's
      `fused_dtypes`; `foreach=True` beside it;
    * parameters: more than one device type (arvc's kernels step one per group), a device without a
      kernel for the class (`fused_devices_of`), a dtype its kernel does not handle (the class's own
      `fused_dtypes` for the real view of a complex parameter, else any floating dtype, as torch's), or a
      tensor that does not cover its memory exactly once.
    """
    name = cls.__name__
    settings = settings or {}
    own_dtypes = getattr(cls, "fused_dtypes", None)
    if settings.get("capturable") or settings.get("differentiable"):
        return RuntimeError(f"{name}: `fused=True` does not support capturable or differentiable")
    buffer_dtypes = [parse_dtype(v, k) for k, v in settings.items() if k.endswith("_dtype") and v is not None]
    if own_dtypes is not None and any(dtype not in own_dtypes for dtype in buffer_dtypes):
        return ValueError(
            f"{name}: the fused path keeps buffers in {_dtype_names(own_dtypes, ' or ')}, got "
            f"{_dtype_names(buffer_dtypes)}; pass fused=False"
        )
    if settings.get("foreach"):
        return RuntimeError(f"{name}: `fused` and `foreach` cannot both be True")
    params = list(params)
    placements = [
        (p.device, p.dtype) if isinstance(p, torch.Tensor) else (torch.device(p[0]), p[1]) for p in params
    ]
    device_types = {device.type for device, _ in placements}
    if getattr(cls, "fused_devices", None) is not None and len(device_types) > 1:
        return RuntimeError(
            f"{name}: `fused=True` steps one device type per param group; this group has parameters on "
            f"{', '.join(sorted(device_types))}. Put them in separate groups, or use foreach=True."
        )
    devices = fused_devices_of(cls)
    for p, (device, dtype) in zip(params, placements, strict=True):
        # A complex parameter is stepped as its real view: its real dtype is what the kernel sees.
        dtype_ok = real_dtype(dtype) in own_dtypes if own_dtypes is not None else dtype.is_floating_point
        if device.type not in devices or not dtype_ok:
            return RuntimeError(
                f"{name}: `fused=True` requires parameters on {', '.join(devices)} with dtype "
                f"{_dtype_names(own_dtypes) if own_dtypes is not None else 'floating point'}; got a "
                f"{dtype} parameter on {device}. Use foreach=True instead."
            )
        if isinstance(p, torch.Tensor) and not is_dense(p):
            return RuntimeError(
                f"{name}: `fused=True` requires dense parameters (each covering its memory exactly once); "
                f"got one of shape {tuple(p.shape)} with strides {p.stride()}. Use foreach=True instead."
            )
    return None


def resolve_fused(cls: type, fused: bool | None, group: dict) -> bool:
    """Decide, at construction, whether param group `group` of an optimizer of class `cls` runs its fused
    path (`fused`: what was asked for).

    `fused=True` needs what `fused_refusal` checks (its error otherwise, as torch.optim). If the kernels
    cannot be built here, the optimizer falls back to foreach with one warning per process; so it does if
    a GPU kernel fails its first-use check (arvc.optim._fused_probe) on this GPU, with one warning saying
    what failed.
    """
    if not fused:
        return False
    refusal = fused_refusal(cls, group["params"], group)
    if refusal is not None:
        raise refusal
    params, name = group["params"], cls.__name__
    try:
        for device in {p.device for p in params}:
            triton_kernels() if _uses_triton(device) else fused_kernels()
    except FusedUnavailable as error:
        global _warned
        if not _warned:
            _warned = True
            warnings.warn(f"{error} {name} uses its foreach path instead.", RuntimeWarning, stacklevel=3)
        logger.debug("%s: fused unavailable, using foreach", name)
        return False
    from arvc.optim._fused_probe import first_use_failure

    for device, dtype in sorted({(p.device, real_dtype(p.dtype)) for p in params}, key=str):
        if _uses_triton(device) and first_use_failure(cls, group, device, dtype) is not None:
            logger.debug("%s: the fused kernel failed its first-use check, using foreach", name)
            return False
    return True


def mark_modified(*tensor_lists) -> None:
    """Bump the autograd version of tensors the kernel wrote through raw pointers, as an in-place torch op
    would: backward through a graph that saved a parameter's old value then fails loudly, as with torch's
    own optimizers, instead of silently using the new value."""
    from torch.autograd.graph import increment_version

    for tensors in tensor_lists:
        increment_version([t for t in tensors if t is not None])


def relayout_state(params, *buffer_lists) -> bool:
    """Give state buffers their parameter's memory layout again (in place, same tensor objects).

    The kernel walks memory in order, so it needs each buffer laid out like its parameter; after
    `model.to(memory_format=torch.channels_last)` or loading contiguous state into such a model they
    differ. Returns whether anything was changed.
    """
    changed = False
    for buffers in buffer_lists:
        for param, buffer in zip(params, buffers, strict=True):
            if buffer is not None and buffer.stride() != param.stride():
                relaid = torch.empty_like(param, dtype=buffer.dtype)
                relaid.copy_(buffer)
                buffer.set_(relaid)
                changed = True
    return changed


def run_kernel(kernel, args: tuple, params, *buffer_lists) -> None:
    """Run `kernel(*args)`; if it refuses a state layout, re-lay the state out like the parameters and
    run it once more (the kernel checks everything before it changes anything, step counters included)."""
    try:
        kernel(*args)
    except RuntimeError as error:
        if "memory layout" not in str(error) or not relayout_state(params, *buffer_lists):
            raise
        kernel(*args)


def kernel_seed(seed: int) -> int:
    """The seed as the kernel's int64 argument: the same 64 bits as `seed & (2**64 - 1)`, which is what
    `rounding_seed` hashes (so seeds >= 2**63 or negative ones round exactly as the reference does)."""
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= 1 << 63 else seed
