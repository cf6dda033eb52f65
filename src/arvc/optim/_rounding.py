"""Rounding helpers shared by arvc's optimizers: the counter-based hash and stochastic rounding."""

from __future__ import annotations

import math

import numpy
import torch

from arvc.optim._checks import LOW_PRECISION_DTYPES

# --- Stochastic rounding -------------------------------------------------------------------------------
# A bf16/fp16 buffer updated with round-to-nearest freezes once the update is below half an ulp:
# with 8 mantissa bits, v * 0.999 rounds back to v. Rounding up or down with probability proportional to
# the distance keeps the value right in expectation, so slow EMAs still move.
# The randomness is a hash of (optimizer seed, parameter index, step, buffer id, element index), never
# torch's global generator: a resumed run draws exactly the bits an uninterrupted run would, and the
# single-tensor, foreach and fused paths draw the same bits.

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def rounding_seed(seed: int, param_index: int, step: int, buffer_id: int) -> int:
    """A well-mixed 63-bit seed that is a pure function of its four arguments."""
    x = _splitmix64(seed & _MASK64)
    for part in (param_index, step, buffer_id):
        x = _splitmix64(x ^ (part & _MASK64))
    return x & ((1 << 63) - 1)


def _splitmix64_array(x: numpy.ndarray) -> numpy.ndarray:
    """`_splitmix64` over a uint64 array (numpy's uint64 arithmetic wraps modulo 2**64, as the masks do)."""
    x = x + numpy.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> numpy.uint64(30))) * numpy.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> numpy.uint64(27))) * numpy.uint64(0x94D049BB133111EB)
    return x ^ (x >> numpy.uint64(31))


def rounding_seeds(seed: int, param_indices, steps, buffer_id: int) -> numpy.ndarray:
    """`rounding_seed` for many (param_index, step) pairs at once (int64 array): the per-step keys of a
    fused launch of hundreds of tensors without a Python loop over them."""
    with numpy.errstate(over="ignore"):
        x = _splitmix64_array(numpy.full(len(param_indices), seed & _MASK64, dtype=numpy.uint64))
        for part in (param_indices, steps, [buffer_id] * len(param_indices)):
            parts = numpy.array([p & _MASK64 for p in part], dtype=numpy.uint64)
            x = _splitmix64_array(x ^ parts)
    return (x & numpy.uint64((1 << 63) - 1)).astype(numpy.int64)


_MASK32 = (1 << 32) - 1
_MIX = 0x45D9F3B  # < 2**27: the int64 products below never overflow


def random_bits(numel: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """32 random bits per element (int64 tensor), a pure function of (element index, seed).

    A counter-based hash rather than a generator stream: the fused C++ kernel computes exactly the same
    bits for any block of any tensor in any order (_fused_cpu/common.h, `mix32`), so every path rounds alike.
    """
    x = torch.arange(numel, dtype=torch.int64, device=device).bitwise_and_(_MASK32)
    return _mix32(x.bitwise_xor_(seed & _MASK32))


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding 32-bit values."""
    x = x.bitwise_xor(x >> 16).mul_(_MIX).bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 16).mul_(_MIX).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 16)


def stochastic_round_(dst: torch.Tensor, src: torch.Tensor, seed: int, lane: int = 0) -> None:
    """Write float32 `src` into `dst`, rounding stochastically when `dst` is bf16/fp16.

    bf16 is the top half of an fp32 word: adding uniform random bits to the discarded low 16 bits and
    truncating rounds up with probability equal to the discarded fraction. fp16 has a different exponent
    range, so there we pick between the two neighbouring fp16 values explicitly.

    `lane` (0 or 1) picks independent bits from the same hash, so two buffers of one parameter (the
    moments) share one hash per element: lane 0 takes the low 16 bits, lane 1 the high 16 (bf16); for
    fp16, lane 1 hashes the bits once more. The fused kernel does exactly this (_fused_cpu/common.h).
    """
    if dst.dtype not in LOW_PRECISION_DTYPES:
        dst.copy_(src)
        return
    src = src.to(torch.float32)
    if src.stride() != dst.stride() or not is_dense(src):
        src = src.contiguous()
    # Each element's bits come from its position in *memory*, as in the fused kernel (which walks memory
    # in order): for a contiguous tensor that is its index; a channels_last one gets the kernel's bits too.
    bits = random_bits(src.numel(), seed, src.device).as_strided(src.shape, src.stride())
    if dst.dtype == torch.bfloat16:
        noise = (bits >> 16 if lane else bits.bitwise_and_(0xFFFF)).to(torch.int32)
        finite = torch.isfinite(src)
        rounded = (src.view(torch.int32) + noise).bitwise_and_(-65536).view(torch.float32)
        # Keep inf/nan as they are; a finite value next to the max must not round up to inf.
        rounded = torch.where(finite & torch.isfinite(rounded), rounded, src)
        dst.copy_(rounded)
        return
    nearest = src.to(dst.dtype)
    residual = src - nearest.to(torch.float32)
    toward = torch.where(
        residual >= 0, torch.full_like(nearest, math.inf), torch.full_like(nearest, -math.inf)
    )
    neighbour = torch.nextafter(nearest, toward)
    gap = (neighbour.to(torch.float32) - nearest.to(torch.float32)).abs()
    probability = torch.where(gap > 0, residual.abs() / gap, torch.zeros_like(gap))
    if lane:
        bits = _mix32(bits)
    uniform = (bits >> 8).to(torch.float32).mul_(2.0**-24)  # 24 bits: exact in float32
    take_neighbour = (uniform < probability) & torch.isfinite(neighbour)
    dst.copy_(torch.where(take_neighbour, neighbour, nearest))


def is_dense(t: torch.Tensor) -> bool:
    """Whether `t` covers a block of memory exactly once (contiguous in some dimension order)."""
    expected = 1
    dims = sorted(((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True) if sz != 1))
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True
