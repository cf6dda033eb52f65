"""Shared by arvc's Triton kernels: typed loads and stores, the rounding hash, and the host-side tables.

The kernels mirror the fused CPU kernels (_fused_cpu/) operation for operation, so that a GPU step equals
the CPU step bit for bit. What that takes in Triton:

* division and square root as `tl.div_rn` / `tl.sqrt_rn` (plain `/` and `tl.sqrt` compile to approximate
  instructions on a GPU), and no a*b+c fusion (every launch passes `enable_fp_fusion=False`);
* bf16 conversions as integer bit operations on the raw 16 bits (the C++ kernel's own formulas: round to
  nearest even, NaN as 0x7FC0), never `.to(tl.bfloat16)`;
* the counter-based rounding hash of arvc.optim._rounding (`mix32(element index ^ key)`) in wrapping
  uint32 arithmetic;
* special values on the careful path everywhere: a GPU step is memory-bound, so the CPU kernel's
  fast-path-then-redo split buys nothing here and every store handles inf/NaN as its careful redo does.

Storage kinds are compile-time constants: 0 float32, 1 bfloat16 (raw uint16 bits), 2 float16.
"""

from __future__ import annotations

import contextlib
import struct

import torch
import triton
import triton.language as tl

from arvc.optim._rounding import is_dense

__all__ = [
    "BLOCK",
    "KINDS",
    "Launch",
    "check_lengths",
    "check_param",
    "check_tensor",
    "commit_steps",
    "float32",
    "groups",
    "launch_blocks",
    "matching_grad",
    "next_step",
    "on_device",
]

BLOCK = 1024  # elements per program
KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_ALIGNMENT = 16  # bytes: a tensor whose every buffer starts on it gets the vectorised (aligned) kernel


@triton.jit
def mix32(x):
    """The 32-bit hash of _rounding.random_bits / _fused_cpu/common.h (two multiply-xorshift rounds)."""
    x = x ^ (x >> 16)
    x = x * 0x45D9F3B
    x = x ^ (x >> 16)
    x = x * 0x45D9F3B
    return x ^ (x >> 16)


@triton.jit
def pointer(address, KIND: tl.constexpr, ALIGNED: tl.constexpr):
    """A typed pointer from an int64 address (bf16 as its raw uint16 bits)."""
    if KIND == 0:
        ptr = address.to(tl.pointer_type(tl.float32))
    elif KIND == 1:
        ptr = address.to(tl.pointer_type(tl.uint16))
    else:
        ptr = address.to(tl.pointer_type(tl.float16))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def load_f32(address, offsets, mask, KIND: tl.constexpr, MASKED: tl.constexpr, ALIGNED: tl.constexpr):
    """One block of a tensor as float32 (exact for every kind)."""
    ptr = pointer(address, KIND, ALIGNED) + offsets
    if MASKED:
        raw = tl.load(ptr, mask=mask, other=0)
    else:
        raw = tl.load(ptr)
    if KIND == 0:
        return raw
    elif KIND == 1:
        return (raw.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return raw.to(tl.float32)


@triton.jit
def bf16_nearest(value):
    """Round to nearest even, as uint32 holding the 16 bits; NaN becomes 0x7FC0 (c10's rounding)."""
    u = value.to(tl.uint32, bitcast=True)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return tl.where((u & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, rounded)


@triton.jit
def bf16_stochastic(value, noise):
    """Add 16 random bits below bf16's last bit and truncate; non-finite values, and finite ones that would
    round up to inf, go to nearest instead (as the CPU kernel and the reference)."""
    u = value.to(tl.uint32, bitcast=True)
    rounded = (u + noise) & 0xFFFF0000
    finite = ((u & 0x7F800000) != 0x7F800000) & ((rounded & 0x7F800000) != 0x7F800000)
    return tl.where(finite, rounded >> 16, bf16_nearest(value))


@triton.jit
def half_stochastic(value, bits):
    """fp16 stochastic rounding: the nearest value or its neighbour on the far side of `value`, with
    probability proportional to the distance (_fused_cpu/common.h store_stochastic_half)."""
    nearest = value.to(tl.float16)
    nearest_f = nearest.to(tl.float32)
    h = nearest.to(tl.uint16, bitcast=True).to(tl.uint32)
    residual = value - nearest_f
    up = residual >= 0.0
    away = ((h & 0x8000) == 0) == up
    step = tl.where(away, h + 1, h - 1)
    following = tl.where((h & 0x7FFF) == 0, tl.where(up, 0x0001, 0x8001), step)
    neighbour = following.to(tl.uint16).to(tl.float16, bitcast=True)
    neighbour_f = neighbour.to(tl.float32)
    gap = tl.abs(neighbour_f - nearest_f)
    probability = tl.where(gap > 0.0, tl.div_rn(tl.abs(residual), tl.where(gap > 0.0, gap, 1.0)), 0.0)
    uniform = (bits >> 8).to(tl.float32) * 5.9604644775390625e-08  # 2^-24
    finite = ((h & 0x7C00) != 0x7C00) & ((following & 0x7C00) != 0x7C00)
    return tl.where(finite & (uniform < probability), neighbour, nearest)


@triton.jit
def store_f32(
    address,
    offsets,
    mask,
    value,
    KIND: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    bits,
    LANE: tl.constexpr,
):
    """Store a float32 block into a tensor of kind KIND: exactly, to nearest, or stochastically rounded
    with the element's hash `bits` (lane 0 and 1 take different bits of it, as in the CPU kernel)."""
    ptr = pointer(address, KIND, ALIGNED) + offsets
    if KIND == 0:
        raw = value
    elif KIND == 1:
        if STOCHASTIC:
            if LANE == 0:
                noise = bits & 0xFFFF
            else:
                noise = bits >> 16
            raw = bf16_stochastic(value, noise).to(tl.uint16)
        else:
            raw = bf16_nearest(value).to(tl.uint16)
    else:
        if STOCHASTIC:
            if LANE == 0:
                raw = half_stochastic(value, bits)
            else:
                raw = half_stochastic(value, mix32(bits))
        else:
            raw = value.to(tl.float16)
    if MASKED:
        tl.store(ptr, raw, mask=mask)
    else:
        tl.store(ptr, raw)


@triton.jit
def block_of(blocks, table, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    """This program's tensor (its row in `table`), the block's offsets, their mask and whether the block
    is full (a full block loads and stores without masks, which is what lets them vectorise)."""
    pid = tl.program_id(0)
    tensor = tl.load(blocks + 2 * pid)
    start = tl.multiple_of(tl.load(blocks + 2 * pid + 1), BLOCK)
    row = table + tensor * WIDTH
    numel = tl.load(row)
    offsets = start + tl.arange(0, BLOCK)
    return tensor, row, offsets, offsets < numel, start + BLOCK <= numel


class Launch:
    """The tables of one multi-tensor launch, built on the host from Python numbers.

    `rows` (int64, one per tensor): numel, the buffers' addresses (0: none), then `extras` (e.g. rounding
    keys); `scalars` (float32, one per tensor): computed in float64 as the CPU kernel does, rounded once
    to float32; `blocks`: each program's (tensor, first element).
    """

    def __init__(
        self,
        device,
        numels: list[int],
        addresses: list[list[int]],
        scalars: list[list[float]],
        extras: list[list[int]] | None = None,
    ):
        self.device = torch.device(device)
        counts = (torch.tensor(numels, dtype=torch.int64) + BLOCK - 1) // BLOCK
        tensor_of_block = torch.repeat_interleave(torch.arange(len(numels)), counts)
        first_block = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        starts = (torch.arange(int(counts.sum())) - first_block) * BLOCK
        self.programs = int(counts.sum())
        self.aligned = all(address % _ALIGNMENT == 0 for row in addresses for address in row)
        extras = extras or [[] for _ in numels]
        rows = [[n, *a, *e] for n, a, e in zip(numels, addresses, extras, strict=True)]
        self.rows = _table(rows, torch.int64, device)
        self.scalars = _table(scalars, torch.float32, device)
        self.blocks = torch.stack([tensor_of_block, starts], dim=1).contiguous().to(device)


def _table(values: list[list], dtype: torch.dtype, device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).contiguous().to(device)


def on_device(device: torch.device):
    """The tensors' device made current for a launch: Triton launches on the *current* CUDA device, which
    for parameters on cuda:1 (`--device cuda:1` outside DDP) is not theirs."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def launch_blocks(kernel, launch: Launch, **constants) -> None:
    """Run `kernel` over every block of the launch, on the launch's device; no fp fusion (each a*b+c
    rounds twice, as on the CPU)."""
    if launch.programs == 0:
        return
    with on_device(launch.device):
        kernel[(launch.programs,)](
            launch.rows,
            launch.scalars,
            launch.blocks,
            ALIGNED=launch.aligned,
            BLOCK=BLOCK,
            enable_fp_fusion=False,
            **constants,
        )


# --- host-side checks (the CPU kernel's, with its messages): everything is checked before anything moves --


def check_lengths(name: str, count: int, *lists) -> None:
    if any(len(tensors) != count for tensors in lists):
        raise RuntimeError(f"arvc fused {name}: tensor lists differ in length")


def check_param(param: torch.Tensor) -> None:
    if not is_dense(param):
        raise RuntimeError("arvc fused step: parameters must be dense tensors (no gaps or overlaps)")


def check_tensor(t: torch.Tensor, param: torch.Tensor, what: str, same_layout: bool = True) -> None:
    if t.device != param.device:
        raise RuntimeError(
            f"arvc fused step: {what} must be on its parameter's device {param.device}, got {t.device}"
        )
    if t.numel() != param.numel():
        raise RuntimeError(f"arvc fused step: {what} has {t.numel()} elements, its parameter {param.numel()}")
    if same_layout and t.stride() != param.stride():
        raise RuntimeError(
            f"arvc fused step: {what} must have its parameter's memory layout (strides {list(t.stride())} vs "
            f"{list(param.stride())})"
        )
    if t.dtype not in KINDS:
        raise RuntimeError(f"arvc fused step: {what} must be float32, bfloat16 or float16, got {t.dtype}")


def matching_grad(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The gradient laid out like its parameter (a copy only when the layouts differ)."""
    if grad.stride() == param.stride():
        return grad
    return torch.empty_like(param, dtype=grad.dtype).copy_(grad)


def next_step(step: torch.Tensor) -> int:
    """The step a parameter is about to take; counters stay CPU float32 scalars, as on the CPU path."""
    if step.device.type != "cpu" or step.dtype != torch.float32 or step.numel() != 1:
        raise RuntimeError("arvc fused step: step counters must be float32 scalars on the CPU")
    return int(step.item()) + 1


def commit_steps(steps) -> None:
    """Advance the counters of the tensors a launch has just stepped: only after it was launched, so a
    refused step (a check) or a failed launch (a compile or launch error) leaves them as they were."""
    if steps:
        torch._foreach_add_(list(steps), 1.0)


def groups(keys: list) -> dict:
    """Indices of the tensors that share one launch (same device, same storage kinds), in order."""
    grouped: dict = {}
    for index, key in enumerate(keys):
        grouped.setdefault(key, []).append(index)
    return grouped


def float32(x: float) -> float:
    """`x` rounded to float32 (what the CPU kernel's static_cast<float> gives)."""
    return struct.unpack("f", struct.pack("f", x))[0]
