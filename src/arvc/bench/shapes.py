"""Parameter lists for the benchmark: the real RVC v2 generator's tensors, scaled to a target size.

Why not one big tensor: an optimizer step's cost depends on how many tensors it walks (per-tensor kernel
launches, Python overhead) as much as on how many numbers. The generator of `v2-40k` has 560 tensors
(conv weights, weight-norm gains, biases; 36.5M numbers); other sizes keep all 560 tensors and scale
the channel dimensions, so a 1M model still has RVC's mix of large convs and tiny biases.
"""

from __future__ import annotations

import functools
import math
import re

import torch

__all__ = ["BASE_CONFIG", "format_size", "parse_size", "parse_sizes", "rvc_shapes", "scaled_shapes"]

BASE_CONFIG = "v2-40k"
ALIGN = 16
MIN_CHANNELS = 32
_SUFFIXES = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_size(text: str) -> int:
    """'8.5M' → 8_500_000; '500k', '1e6' and plain integers work too."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmg]?)\s*", str(text).lower())
    if not match:
        raise ValueError(f"invalid size {text!r}; expected e.g. 1M, 8.5M, 500k or 200000")
    value = float(match.group(1)) * _SUFFIXES[match.group(2)]
    if value < 1:
        raise ValueError(f"invalid size {text!r}; must be at least 1 parameter")
    return int(round(value))


def parse_sizes(text: str) -> list[int]:
    return [parse_size(item) for item in str(text).split(",") if item.strip()]


def format_size(n: int) -> str:
    """A short label: 8_500_000 → '8.5M'."""
    for suffix, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


@functools.cache
def rvc_shapes(config: str = BASE_CONFIG) -> tuple[tuple[int, ...], ...]:
    """Shapes of every generator parameter, built on the meta device (no memory, no weights)."""
    from arvc.config import load_config
    from arvc.model import Synthesizer

    with torch.device("meta"):
        model = Synthesizer(load_config(config))
    return tuple(tuple(p.shape) for p in model.parameters())


def _scale_shape(shape: tuple[int, ...], factor: float) -> tuple[int, ...]:
    # Channel dimensions (>= 32 in RVC) shrink to multiples of 16, as real layer widths are: blockwise
    # 8-bit optimizers quantize only tensors whose size divides into 256-element blocks. A conv's kernel
    # size (the last dim of a 3-d weight) and small dims (1, heads, the 21-step window) stay.
    keep_last = len(shape) == 3
    scaled = []
    for axis, dim in enumerate(shape):
        if dim < MIN_CHANNELS or (keep_last and axis == len(shape) - 1):
            scaled.append(dim)
        else:
            scaled.append(max(ALIGN, round(dim * factor / ALIGN) * ALIGN))
    return tuple(scaled)


def _total(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


def scaled_shapes(target: int, base: tuple[tuple[int, ...], ...] | None = None) -> list[tuple[int, ...]]:
    """`base` (the RVC generator by default) with channel dims scaled so the total is closest to target."""
    base = rvc_shapes() if base is None else base
    low, high = 0.0, 1.0
    while _total(_scale_shape(s, high) for s in base) < target and high < 1e4:
        high *= 2
    for _ in range(60):  # bisection on the factor; the total is monotone in it
        mid = (low + high) / 2
        if _total(_scale_shape(s, mid) for s in base) < target:
            low = mid
        else:
            high = mid
    candidates = [[_scale_shape(s, f) for s in base] for f in (low, high)]
    return min(candidates, key=lambda shapes: abs(_total(shapes) - target))
