"""Math shared by arvc's optimizers: argument checks, dtype parsing, stochastic rounding.

Kept in one place so every optimizer validates and rounds the same way (optimi's layout).
"""

from __future__ import annotations

import math

import torch

LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


def parse_dtype(value: torch.dtype | str, name: str) -> torch.dtype:
    """Turn a torch dtype or its name ("bfloat16", "bf16", ...) into a floating torch dtype."""
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise ValueError(f"Invalid {name}: {value} is not a floating-point dtype")
        return value
    if isinstance(value, str):
        key = value.lower().removeprefix("torch.")
        if key in _DTYPE_NAMES:
            return _DTYPE_NAMES[key]
    valid = ", ".join(sorted({"float32", "bfloat16", "float16", "float64"}))
    raise ValueError(f"Invalid {name}: {value!r}; use a torch dtype or one of {valid}")


def check_common_hyperparameters(lr, betas, eps, weight_decay) -> None:
    """Validate the Adam-family hyperparameters up front, naming the bad one (torch.optim's messages)."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        lr = lr.item()
    if not (isinstance(lr, (int, float)) and math.isfinite(lr)) or lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")
    for index, beta in enumerate(betas):
        if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
            raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps)) or eps < 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay)) or weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


def evaluate_closure(closure):
    """Run an optimizer closure with gradients enabled (step() itself runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def params_with_grad(param_groups: list[dict], optimizer_name: str):
    """Yield (group, [(index, param), ...]) for the params that have a gradient.

    The index counts every parameter across all groups in order, so it names a parameter stably
    (it seeds stochastic rounding). Sparse gradients are refused with a clear error.
    """
    offset = 0
    for group in param_groups:
        indexed = []
        for i, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{optimizer_name} does not support sparse gradients; use torch.optim.SparseAdam"
                )
            indexed.append((offset + i, p))
        offset += len(group["params"])
        yield group, indexed


def load_state_dict_keeping_dtypes(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """`Optimizer.load_state_dict`, but every state tensor keeps the dtype it was saved with.

    torch casts floating state to its parameter's dtype on load (pytorch#43706): an fp32 moment of a
    bf16 parameter would silently become bf16 on resume. Here the saved tensors are put back as they
    were (moved to the parameter's device), so a resumed run continues bit for bit.
    """
    # `foreach`/`fused` say how this process runs the math, not what the math is: a checkpoint written
    # with the fused kernel resumes on a machine without a compiler (and vice versa).
    paths = [{k: g[k] for k in ("foreach", "fused") if k in g} for g in optimizer.param_groups]
    torch.optim.Optimizer.load_state_dict(optimizer, state_dict)
    for group, path in zip(optimizer.param_groups, paths, strict=True):
        group.update(path)
    saved_ids = [pid for group in state_dict["param_groups"] for pid in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for pid, p in zip(saved_ids, params, strict=True):
        saved = state_dict["state"].get(pid)
        if not saved:
            continue
        for key, value in saved.items():
            if key != "step" and isinstance(value, torch.Tensor):
                optimizer.state[p][key] = value.to(device=p.device, copy=True)


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
    if src.stride() != dst.stride() or not _dense(src):
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


def _dense(t: torch.Tensor) -> bool:
    """Whether `t` covers a block of memory exactly once (contiguous in some dimension order)."""
    expected = 1
    dims = sorted(((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True) if sz != 1))
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def group_tensors_by_device_and_dtype(tensor_lists: list[list]) -> dict:
    """Split parallel lists by the (device, dtype) of the first list, for the foreach bodies.

    Returns {(device, dtype): (lists restricted to that group, indices)}; entries of the other lists
    may be None or live elsewhere (step counters stay on the CPU).
    """
    groups: dict = {}
    for index, leader in enumerate(tensor_lists[0]):
        groups.setdefault((leader.device, leader.dtype), []).append(index)
    return {
        key: ([[values[i] for i in indices] for values in tensor_lists], indices)
        for key, indices in groups.items()
    }
