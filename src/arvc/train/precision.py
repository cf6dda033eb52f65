"""`--precision auto`: the safe training precision for a device, as a pure function of what it is.

RVC trainers lose runs to fp16 on cards that cannot do it (RVC #507; Applio #943): consumer Pascal (6.1)
runs fp16 at 1/64 of its fp32 rate, and GTX 16xx cards (Turing without tensor cores) produce NaNs in half
precision (pytorch/pytorch#58123). The rule, by compute capability and name:

| device | precision | why |
|---|---|---|
| CPU (or anything not CUDA) | fp32 | mixed precision is a GPU feature; arvc measures its CPU path in fp32 |
| CUDA < 7.0 (Pascal and older) | fp32 | no tensor cores; fp16 is slow there |
| GTX 16xx (7.5, no tensor cores) | fp32 | fp16 overflows to NaN on these cards |
| CUDA 7.x (Volta, Turing RTX) | fp16 + GradScaler | tensor cores, but no bf16 |
| CUDA >= 8.0 (Ampere and newer) | bf16, TF32 matmuls | bf16 has fp32's range: no loss scaling |

The decision is logged with its reason and recorded in the checkpoint (`precision`), and resume keeps the
run's precision whatever `auto` would choose on the machine it resumes on.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

__all__ = ["AUTO", "PrecisionChoice", "choose_precision", "device_precision", "tf32_matmuls"]

AUTO = "auto"
_GTX_16 = re.compile(r"\bGTX\s*16\d\d\b", re.IGNORECASE)


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32, bf16 or fp16
    tf32: bool  # allow TF32 for the fp32 matmuls and convolutions that remain
    reason: str


def choose_precision(
    device_type: str, capability: tuple[int, int] | None = None, name: str = ""
) -> PrecisionChoice:
    """The precision `auto` trains in on a device: its type ("cpu", "cuda", ...), CUDA compute capability
    (major, minor) and name, as torch reports them. Pure: tested without a GPU."""
    if device_type != "cuda":
        return PrecisionChoice("fp32", False, f"{device_type} device: mixed precision is for CUDA GPUs")
    if capability is None:
        raise ValueError("a CUDA device needs its compute capability to choose a precision")
    major, minor = capability
    label = f"{name or 'CUDA device'} (compute capability {major}.{minor})"
    if major < 7:
        return PrecisionChoice("fp32", False, f"{label}: no tensor cores, half precision is slow there")
    if _GTX_16.search(name):
        return PrecisionChoice("fp32", False, f"{label}: GTX 16xx cards give NaNs in fp16 and have no bf16")
    if major < 8:
        return PrecisionChoice("fp16", False, f"{label}: tensor cores without bf16; fp16 with loss scaling")
    return PrecisionChoice("bf16", True, f"{label}: bf16 (fp32's range, no loss scaling) and TF32 matmuls")


def device_precision(device: torch.device) -> PrecisionChoice:
    """`choose_precision` for a device of this machine."""
    if device.type != "cuda":
        return choose_precision(device.type)
    return choose_precision(
        "cuda", torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device)
    )


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """Within the block CUDA fp32 matmuls and convolutions may use TF32 (Ampere and newer); restored after."""
    if not enabled:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
