"""The first-use check of arvc's GPU kernels: a kernel that never ran on this GPU cannot break a run.

The Triton kernels are proven without a GPU (bit for bit in Triton's interpreter, and by reading their
PTX), but a real GPU, driver and Triton build can still fail to compile or launch one, or compute
something else. So the first time an optimizer's fused kernel is used for a kind of GPU, before the
optimizer's own first step, it runs on a small probe beside the foreach path:

* two tensors (1,030 elements: a full and a partial block; 3x5) of the group's dtype, with the group's
  settings (its lr replaced by 1e-2, so that an update shows), three steps: two plain, one with
  GradScaler's scale handed to the kernel (the probe's fused side gets its gradients times 256 and the
  scale; the foreach side the gradients themselves) where the optimizer takes it
  (`_step_supports_amp_scaling`; the schedule-free ones do not), else a third plain one;
* on an exception, or a parameter, state buffer or step counter that differs from the foreach path's
  beyond the tolerance below, the group runs its foreach path instead (the same update, slower) and one
  warning says what failed;
* the verdict is kept in `cache_dir()/fused-kernels.json` (written atomically), keyed by the GPU model,
  its compute capability, the triton version, a hash of the kernels' source, the optimizer, the dtype
  and the settings that choose the kernel's variant, so later runs on that GPU do not probe again.

Tolerance (per tensor, normwise: the largest difference against the largest value of the tensor):

* float32: 2^-16 (about 1.5e-5, 256 units in the last place of the largest element). The GPU's foreach
  kernels contract a*b+c into fused multiply-adds and order some operations differently, so each step
  may differ from the Triton kernel (which does neither) by a few units in the last place; a kernel
  that is wrong differs by the order of the update itself (lr 1e-2) or by garbage.
* bfloat16/float16 storage: 2 units in the last place of the dtype (2 * its eps), since a last-bit
  difference in float32 can send a stored value to its neighbour, nearest or stochastic rounding alike.
* a Kahan compensation buffer: 2 units in the last place of its *parameter's* dtype against the
  parameter's largest value (where a parameter's rounding flips, its residual moves by that unit).
* anything not finite (the probe's numbers are all finite), or step counters that differ (per parameter,
  or a schedule-free group's `k`): a mismatch.

On the CPU (tests, Triton's interpreter) the same probe runs against the CPU foreach path; there the
kernels equal the C++ kernel bit for bit, and the foreach path differs from both in the last bits only.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import logging
import os
import threading
import time
import warnings
from pathlib import Path

import torch

from arvc._files import cache_dir, write_text

__all__ = ["PROBE_SCALE", "PROBE_SHAPES", "cache_path", "first_use_failure", "recorded_verdicts", "tolerance"]

logger = logging.getLogger(__name__)

PROBE_SHAPES = ((1030,), (3, 5))
PROBE_STEPS = 3
PROBE_SCALE = 256.0  # a power of two: the scaled gradients divide back exactly
PROBE_LR = 1e-2
FLOAT32_RTOL = 2.0**-16
_CACHE_FILE = "fused-kernels.json"
_CACHE_VERSION = 1
# A schedule-free group's running values (arvc.optim.adamw_schedulefree): bookkeeping, not settings; the
# probe's optimizers start their own (a group added in eval mode would refuse the probe's steps).
_RUNNING = ("k", "train_mode", "weight_sum", "lr_max", "scheduled_lr")
# Group entries that never choose a kernel variant (per-step numbers, bookkeeping).
_NOT_VARIANT = ("params", "lr", "initial_lr", "fused", "foreach", "seed", *_RUNNING)

_lock = threading.Lock()
_local = threading.local()  # .active: the probe is building optimizers of its own (no nested probe)
_verdicts: dict[tuple[str, str], dict] = {}  # (cache file, key) -> verdict, this process
_warned: set[tuple[str, str]] = set()  # verdicts this process has warned about


def cache_path() -> Path:
    return cache_dir() / _CACHE_FILE


def tolerance(dtype: torch.dtype) -> float:
    """The largest difference allowed, relative to the largest value, for a tensor stored in `dtype`."""
    return FLOAT32_RTOL if dtype == torch.float32 else 2 * torch.finfo(dtype).eps


@functools.cache
def _kernels_hash() -> str:
    """A hash of the Triton kernels' source and of the host side that feeds them (arvc.optim._fused_args:
    the checks and the per-step scalars): a new arvc whose kernels changed checks again."""
    optim = importlib.resources.files("arvc.optim")
    sources = [f for f in (optim / "_fused_triton").iterdir() if f.name.endswith(".py")]
    texts = sorted((f.name, f.read_text()) for f in [*sources, optim / "_fused_args.py"])
    return hashlib.sha256("\n".join(n + t for n, t in texts).encode()).hexdigest()[:12]


def _where(device: torch.device) -> str:
    """The GPU model and compute capability (on the CPU: the Triton interpreter the tests run)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return f"{device.type}{' (Triton interpreter)' if interpreted else ''}"


def _key(cls: type, settings: dict, device: torch.device, dtype: torch.dtype) -> str:
    import triton

    variant = {k: v for k, v in settings.items() if k not in _NOT_VARIANT}
    digest = hashlib.sha256(repr(sorted(variant.items(), key=lambda kv: kv[0])).encode()).hexdigest()[:8]
    return " | ".join(
        [
            _where(device),
            f"triton {triton.__version__}",
            f"kernels {_kernels_hash()}",
            f"{cls.__name__} {str(dtype).removeprefix('torch.')}",
            f"settings {digest}",
        ]
    )


def first_use_failure(cls: type, settings: dict, device, dtype: torch.dtype) -> str | None:
    """Why `cls`'s fused kernel must not be used for `dtype` tensors on `device` (None: it may).

    Probes on first use (see the module docstring), remembers the verdict on disk and in this process,
    and warns once per process for a kernel that failed (now or in an earlier run)."""
    if getattr(_local, "active", False):
        return None
    device = torch.device(device)
    key = _key(cls, settings, device, dtype)
    path = cache_path()
    memo = (str(path), key)
    with _lock:
        verdict = _verdicts.get(memo) or _read(path).get(key)
        if verdict is None:
            why = _probe(cls, settings, device, dtype)
            verdict = {"ok": why is None, "why": why, "checked": time.strftime("%Y-%m-%d %H:%M:%S")}
            _remember(path, key, verdict)
            if why is None:
                logger.info(
                    "arvc's fused kernel for %s (%s) passed its first-use check: %s",
                    cls.__name__,
                    str(dtype).removeprefix("torch."),
                    key,
                )
        _verdicts[memo] = verdict
        if verdict.get("ok"):
            return None
        why = verdict.get("why") or "failed"
        if memo not in _warned:
            _warned.add(memo)
            warnings.warn(
                f"arvc's fused GPU kernel for {cls.__name__} ({str(dtype).removeprefix('torch.')}) failed "
                f"its first-use check on {_where(device)} ({verdict.get('checked', '?')}): {why}. "
                f"{cls.__name__} uses its foreach path instead (the same update, slower). The verdict is "
                f"kept in {path}; delete that file to check again.",
                RuntimeWarning,
                stacklevel=4,
            )
        return why


def recorded_verdicts(path: Path | None = None) -> list[dict]:
    """The verdicts kept in the cache file (default: `cache_path()`), for reports (benchmarks/gpu_check.py):
    one dict each with its key's parts — where (GPU model and compute capability, or the CPU), on_gpu,
    triton, kernels, optimizer, dtype, settings — and the verdict's ok, why and checked."""
    rows = []
    for key, verdict in _read(cache_path() if path is None else Path(path)).items():
        parts = key.split(" | ")
        if len(parts) != 5:  # not a key this version writes
            continue
        where, triton_version, kernels, which, settings = parts
        optimizer, _, dtype = which.partition(" ")
        rows.append(
            {
                "key": key,
                "where": where,
                "on_gpu": where.split(" ")[0] not in ("cpu", "meta"),
                "triton": triton_version.removeprefix("triton "),
                "kernels": kernels.removeprefix("kernels "),
                "optimizer": optimizer,
                "dtype": dtype,
                "settings": settings.removeprefix("settings "),
                "ok": bool(verdict.get("ok")),
                "why": verdict.get("why"),
                "checked": verdict.get("checked"),
            }
        )
    return rows


def _read(path: Path) -> dict:
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.info("ignoring an unreadable %s (%s); kernels are checked again", path, error)
        return {}
    if not isinstance(saved, dict) or saved.get("version") != _CACHE_VERSION:
        return {}
    verdicts = saved.get("verdicts")
    return {k: v for k, v in verdicts.items() if isinstance(v, dict)} if isinstance(verdicts, dict) else {}


def _remember(path: Path, key: str, verdict: dict) -> None:
    verdicts = _read(path)  # again: another process may have added its own since
    verdicts[key] = verdict
    try:
        write_text(path, json.dumps({"version": _CACHE_VERSION, "verdicts": verdicts}, indent=1) + "\n")
    except OSError as error:
        logger.info("could not keep the kernel check's verdict (%s); the next run checks again", error)


def _probe(cls: type, settings: dict, device: torch.device, dtype: torch.dtype) -> str | None:
    """Run the fused kernel beside the foreach path on the probe; why they disagree (None: they agree)."""
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(shape, generator=generator) for shape in PROBE_SHAPES]
    # Copies (copy=True): on the CPU (the interpreter's tests) a float32 `.to` would hand both sides the
    # same memory, and each optimizer would step the other's parameters too.
    fused_params = [torch.nn.Parameter(t.to(device=device, dtype=dtype, copy=True)) for t in start]
    reference_params = [torch.nn.Parameter(t.to(device=device, dtype=dtype, copy=True)) for t in start]
    group = {k: v for k, v in settings.items() if k not in ("params", "initial_lr", *_RUNNING)}
    _local.active = True
    try:
        try:
            reference = cls(
                [{**group, "params": reference_params, "lr": PROBE_LR, "fused": False, "foreach": True}]
            )
            fused = cls([{**group, "params": fused_params, "lr": PROBE_LR, "fused": True, "foreach": None}])
            for step in range(PROBE_STEPS):
                scaled = step == PROBE_STEPS - 1 and getattr(fused, "_step_supports_amp_scaling", False)
                grads = [torch.randn(shape, generator=generator) for shape in PROBE_SHAPES]
                for p, q, grad in zip(fused_params, reference_params, grads, strict=True):
                    p.grad = (grad * PROBE_SCALE if scaled else grad).to(dtype).to(device)
                    q.grad = grad.to(dtype).to(device)
                if scaled:  # what GradScaler hands a fused optimizer
                    fused.grad_scale = torch.full((), PROBE_SCALE, device=device)
                    fused.found_inf = torch.zeros((), device=device)
                fused.step()
                if scaled:
                    del fused.grad_scale, fused.found_inf
                reference.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # an asynchronous launch error surfaces here
        except Exception as error:  # a compile or launch error of any kind: the kernel is not usable here
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            return f"{type(error).__name__}: {first_line}".rstrip(": ")
    finally:
        _local.active = False
    return _mismatch(fused, fused_params, reference, reference_params)


def _mismatch(fused, fused_params, reference, reference_params) -> str | None:
    steps = [[g.get("k") for g in optimizer.param_groups] for optimizer in (fused, reference)]
    if steps[0] != steps[1]:  # a schedule-free group's step count
        return f"probe: group steps {steps[0]} instead of {steps[1]}"
    for index, (p, q) in enumerate(zip(fused_params, reference_params, strict=True)):
        state, expected = fused.state[p], reference.state[q]
        if state.keys() != expected.keys():
            return f"probe tensor {index}: state {sorted(state)} instead of {sorted(expected)}"
        if "step" in expected and float(state["step"]) != float(expected["step"]):
            return (
                f"probe tensor {index}: step {float(state['step']):g} instead of {float(expected['step']):g}"
            )
        pairs = [("parameter", p, q, q, tolerance(q.dtype))]
        for key in sorted(expected):
            if key == "step":
                continue
            # A Kahan residual moves by a unit of its parameter's dtype where the parameter's rounding flips.
            scale, rtol = (q, tolerance(q.dtype)) if key == "compensation" else (expected[key], None)
            pairs.append((key, state[key], expected[key], scale, rtol or tolerance(expected[key].dtype)))
        for what, got, want, scale, rtol in pairs:
            got, want = got.detach().double(), want.detach().double()
            if not (torch.isfinite(got).all() and torch.isfinite(want).all()):
                return f"probe tensor {index}: {what} is not finite"
            difference = (got - want).abs().max().item() if got.numel() else 0.0
            allowed = rtol * (scale.detach().double().abs().max().item() if scale.numel() else 0.0)
            if difference > allowed:
                return (
                    f"probe tensor {index}: {what} differs from the foreach path by {difference:.3g} "
                    f"(tolerance {allowed:.3g})"
                )
    return None
