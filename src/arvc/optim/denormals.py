"""Flush denormal floats to zero on every CPU intra-op thread, for a block, then restore what was.

Denormals (tiny floats such as early RAdam/Adam moments) can make a CPU step ~100x slower. Flushing
them changes results in the last bits, so it must hold on every thread alike: `torch.set_flush_denormal`
sets the calling thread only (with 2 threads, `torch.full((4_000_000,), 1e-30) * 1e-10` keeps 2,000,000
non-zero), so numbers would depend on the thread count. `flush_denormals()` sets FTZ/DAZ on the caller
and on each intra-op worker through arvc's fused CPU extension (_fused_cpu/denormals.h) and restores each
thread's own previous mode on exit. Without the extension (no compiler) or off x86 it falls back to
`torch.set_flush_denormal` on the calling thread, with one warning. The thread count is read on entry:
call `torch.set_num_threads` before entering, not inside.
"""

from __future__ import annotations

import contextlib
import logging

import torch

__all__ = ["flush_denormals"]

logger = logging.getLogger(__name__)

_warned = False


@contextlib.contextmanager
def flush_denormals(enabled: bool = True):
    """Within the block, denormal floats are flushed to zero on every intra-op thread (CPU)."""
    if not enabled:
        yield
        return
    previous = _set_everywhere()
    if previous is None:  # fallback: the calling thread only
        was = _calling_thread_flushes()
        torch.set_flush_denormal(True)
        try:
            yield
        finally:
            torch.set_flush_denormal(was)
        return
    try:
        yield
    finally:
        _kernels().restore_flush_denormal_all(previous)


def _kernels():
    from arvc.optim._fused import fused_kernels

    return fused_kernels()


def _set_everywhere() -> list[int] | None:
    global _warned
    why = None
    try:
        previous = _kernels().set_flush_denormal_all(True)
        if previous:
            return previous
        why = "this CPU has no flush-to-zero control arvc can set per thread"
    except Exception as error:  # FusedUnavailable: no compiler, no ninja, ...
        why = f"arvc's CPU extension is unavailable ({error})"
    if not _warned:
        _warned = True
        logger.warning(
            "denormals are flushed on the calling thread only: %s; CPU results may depend on the "
            "number of threads (torch.set_num_threads(1) makes them independent of it)",
            why,
        )
    return None


def _calling_thread_flushes() -> bool:
    """Whether the calling thread flushes denormals now (torch has no getter: probe it)."""
    tiny = torch.tensor([1e-30], dtype=torch.float32)
    return bool((tiny * 1e-10 == 0).item())
