"""Random draws per batch item, so a batch's noise does not depend on how the batch is split.

Training draws its randomness (the segment window, the posterior sample, the NSF start phases and noise)
inside :func:`per_item_noise`: every item then draws from its own generator, seeded by
``(seed, step, dataset index, site)``. An item gets the same numbers whether it sits in a batch of 8 on
one process or in a batch of 4 on each of two (DistributedDataParallel), and whatever its row or the
batch's padding — which is what makes a 2-process run match a 1-process one, and resume exact across
world sizes. Outside that context (inference, model tests) the draws come from torch's global RNG, as in
RVC.

Draws happen on the CPU (one small generator per item and site) and are then moved to the device.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["per_item_noise", "rand", "randn_like"]

SITES = {"slice": 1, "posterior": 2, "sine_phase": 3, "sine_noise": 4}


@dataclass(frozen=True)
class _Keys:
    seed: int
    step: int
    items: tuple[int, ...]  # dataset index of every row of the batch

    def generator(self, row: int, site: str) -> torch.Generator:
        words = np.random.SeedSequence([self.seed, self.step, self.items[row], SITES[site]]).generate_state(2)
        return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


_KEYS: contextvars.ContextVar[_Keys | None] = contextvars.ContextVar("arvc_item_noise", default=None)


@contextlib.contextmanager
def per_item_noise(seed: int, step: int, items: Sequence[int]) -> Iterator[None]:
    """Inside: every random draw of the model comes from per-item generators keyed as above."""
    token = _KEYS.set(_Keys(int(seed), int(step), tuple(int(i) for i in items)))
    try:
        yield
    finally:
        _KEYS.reset(token)


def _rows(keys: _Keys, batch: int) -> range:
    if len(keys.items) != batch:
        raise ValueError(f"per-item noise: the batch has {batch} rows but {len(keys.items)} item ids")
    return range(batch)


# torch.compile runs the draws eagerly: Dynamo cannot trace a seeded torch.Generator, and tracing them made
# it recompile every step (grad mode, new seeds) until its recompile limit.
@torch.compiler.disable
def rand(site: str, batch: int, *shape: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform ``[batch, *shape]`` in [0, 1): per item inside :func:`per_item_noise`, else global RNG."""
    keys = _KEYS.get()
    if keys is None:
        return torch.rand(batch, *shape, device=device)
    rows = [torch.rand(shape, generator=keys.generator(r, site)) for r in _rows(keys, batch)]
    return torch.stack(rows).to(device)


@torch.compiler.disable
def randn_like(site: str, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal like ``x [B, ..., T]``; per item inside :func:`per_item_noise`, else global RNG.

    With ``lengths``, item ``b`` draws only its first ``lengths[b]`` steps of the last axis and the rest
    is zero (callers mask it anyway), so the numbers do not depend on the batch's padding.
    """
    keys = _KEYS.get()
    if keys is None:
        return torch.randn_like(x)
    out = torch.zeros(x.shape, dtype=torch.float32)
    sizes = lengths.tolist() if lengths is not None else [x.size(-1)] * x.size(0)
    for r in _rows(keys, x.size(0)):
        n = min(int(sizes[r]), x.size(-1))
        out[r, ..., :n] = torch.randn((*x.shape[1:-1], n), generator=keys.generator(r, site))
    return out.to(device=x.device, dtype=x.dtype)
