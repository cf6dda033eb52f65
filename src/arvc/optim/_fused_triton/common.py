"""Shared by arvc's Triton kernels: typed loads and stores, the rounding hash, the launch tables, and the
scalar tables' column offsets by name. The argument checks and the per-step scalars are not here: they are
arvc.optim._fused_args's, run once before either kernel (C++ or Triton).

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

import collections
import contextlib

import torch
import triton
import triton.language as tl

from arvc.optim._fused_args import KINDS, ScalarLayout, copied_grads

__all__ = [
    "BLOCK",
    "KINDS",
    "Launch",
    "Plan",
    "Skipped",
    "groups",
    "launch_blocks",
    "offsets",
    "on_device",
    "upload",
]

BLOCK = 1024  # elements per program
_ALIGNMENT = 16  # bytes: a tensor whose every buffer starts on it gets the vectorised (aligned) kernel


class _Offsets(tl.constexpr):
    """A scalar layout's column offsets as a compile-time constant a kernel reads by name: `K.decay` is
    the column's index, `K.width` the row's length (a tl.constexpr holding a namedtuple: a jit function
    may read only constexpr globals, and the compiler sees the namedtuple's fields)."""

    def __init__(self, layout: ScalarLayout):
        columns = collections.namedtuple(layout.struct, [*layout.columns, "width"])
        super().__init__(columns(*range(layout.width), layout.width))
        for index, name in enumerate(columns._fields):
            setattr(self, name, tl.constexpr(index))


def offsets(layout: ScalarLayout) -> tl.constexpr:
    """The column offsets of `layout` (arvc.optim._fused_args) for a kernel: `tl.load(row + K.eps)`."""
    return _Offsets(layout)


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
def load_grad(
    address,
    offsets,
    mask,
    scale,
    KIND: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    MASKED: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    """One block of a gradient as float32, divided by GradScaler's scale where the launch has one
    (HAS_SCALE), then negated where the step maximizes (MAXIMIZE): what every kernel's update starts from."""
    grad = load_f32(address, offsets, mask, KIND, MASKED, ALIGNED)
    if HAS_SCALE:
        grad = tl.div_rn(grad, tl.load(scale))
    if MAXIMIZE:
        grad = -grad
    return grad


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
    """One multi-tensor launch: its tables on the device and what each step hands it.

    Kept from step to step (see arvc.optim._fused_args.cached_plan): `rows` (int64, one per tensor: numel,
    then the buffers' addresses, 0: none) and `blocks` (each program's (tensor, first element)). Given
    each step:
    `scalars` (float32, one row per tensor: the op's table from arvc.optim._fused_args, the same the CPU
    kernel reads), `extra` (kernel-specific per-step tables, e.g. rounding keys), GradScaler's `scale` and
    `found_inf` as device tensors the kernel reads itself (no host read: a set `found_inf` makes the
    kernel write nothing). `index` picks this launch's tensors out of the call's per-tensor tables.
    """

    def __init__(self, device, members: list[int], numels: list[int], addresses: list[list[int]]):
        self.device = torch.device(device)
        counts = (torch.tensor(numels, dtype=torch.int64) + BLOCK - 1) // BLOCK
        tensor_of_block = torch.repeat_interleave(torch.arange(len(numels)), counts)
        first_block = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        starts = (torch.arange(int(counts.sum())) - first_block) * BLOCK
        self.programs = int(counts.sum())
        self.aligned = all(address % _ALIGNMENT == 0 for row in addresses for address in row)
        self.members = members
        self.index = torch.tensor(members, dtype=torch.int64)
        self.rows = upload(
            torch.tensor([[n, *a] for n, a in zip(numels, addresses, strict=True)]), self.device
        )
        self.blocks = upload(torch.stack([tensor_of_block, starts], dim=1), self.device)
        self.one = torch.ones((), device=self.device)  # the scale and flag of a step without GradScaler
        self.zero = torch.zeros((), device=self.device)
        self.scalars: torch.Tensor | None = None
        self.extra: tuple = ()
        self.scale, self.found_inf = self.one, self.zero

    def prepare(self, scalars: torch.Tensor, extra=(), grad_scale=None, found_inf=None) -> None:
        """This step's numbers: rows of the call's per-tensor tables (CPU) sent without a host sync."""
        whole = len(self.members) == scalars.shape[0]
        self.scalars = upload(scalars if whole else scalars.index_select(0, self.index), self.device)
        self.extra = tuple(upload(t if whole else t.index_select(0, self.index), self.device) for t in extra)
        self.scale = self.one if grad_scale is None else _on(grad_scale, self.device)
        self.found_inf = self.zero if found_inf is None else _on(found_inf, self.device)


def upload(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host table on `device`: from pinned memory without blocking on a GPU (the copy is queued like a
    kernel; torch keeps the pinned block until it is done), as is on the CPU (the interpreter's tests)."""
    table = table.contiguous()
    if device.type != "cuda":
        return table
    return table.pin_memory().to(device, non_blocking=True)


def _on(value, device: torch.device) -> torch.Tensor:
    """GradScaler's scale or flag as a float32 tensor on `device` (a queued copy if it is elsewhere)."""
    if not isinstance(value, torch.Tensor):
        return torch.full((), float(value), dtype=torch.float32, device=device)
    return value.to(device=device, dtype=torch.float32, non_blocking=True).reshape(())


class Plan:
    """The checked layout of one call's tensors: its launches (one per device and storage kinds), kept
    while the tensors stay the same (arvc.optim._fused_args.cached_plan). `keep` holds gradient copies
    laid out like their parameters (a call that needs them is planned anew every step: the copies are new
    each time).

    Made from `keys`, each tensor's launch key (its device, then its storage kinds: one launch per
    distinct key, as (key, Launch) in `launches`); `tensors`, the lists whose addresses a tensor's row
    holds after its numel, in the kernel's column order (parameters, laid-out gradients, then state; None:
    address 0); and `grads`, the gradients as the call gave them.
    """

    def __init__(self, keys: list[tuple], tensors: list[list], grads):
        params, laid_out = tensors[0], tensors[1]
        self.launches: list[tuple[tuple, Launch]] = []
        for key, members in groups(keys).items():
            addresses = [[0 if t[i] is None else t[i].data_ptr() for t in tensors] for i in members]
            numels = [params[i].numel() for i in members]
            self.launches.append((key, Launch(key[0], members, numels, addresses)))
        self.keep = copied_grads(laid_out, grads)


class Skipped:
    """Whether GradScaler's `found_inf` is set, read on the host only to decide whether the step counters
    advance: copied (non-blocking, into pinned memory) before the launches are queued, and waited for
    after them, so the kernels never wait on the host (they read the flag themselves)."""

    def __init__(self, found_inf):
        self.event = None
        if found_inf is None:
            self.host = None
        elif isinstance(found_inf, torch.Tensor) and found_inf.device.type == "cuda":
            self.host = torch.empty((), dtype=torch.float32, pin_memory=True)
            self.host.copy_(found_inf.reshape(()), non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(found_inf.device))
        else:
            self.host = torch.as_tensor(found_inf, dtype=torch.float32).detach().clone()

    def __bool__(self) -> bool:
        if self.host is None:
            return False
        if self.event is not None:
            self.event.synchronize()
        return float(self.host) != 0.0


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
            launch.scale,
            launch.found_inf,
            *launch.extra,
            ALIGNED=launch.aligned,
            BLOCK=BLOCK,
            enable_fp_fusion=False,
            **constants,
        )


def groups(keys: list) -> dict:
    """Indices of the tensors that share one launch (same device, same storage kinds), in order."""
    grouped: dict = {}
    for index, key in enumerate(keys):
        grouped.setdefault(key, []).append(index)
    return grouped
