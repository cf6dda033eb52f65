"""`--device auto|cpu|cuda|cuda:N`: where arvc computes, decided in one place for every entry point.

`auto` (the default of `arvc train`, `compare`, `infer`, `preprocess`, `ui` and of the Python API) is the
user's CUDA GPU when torch sees one, else the CPU. A device string is checked before any work: an unknown
one, `cuda` on a machine (or a torch build) without CUDA, and `cuda:N` past the last GPU are refused with
a message that says what to do. Resolving only asks torch whether CUDA is there and how many GPUs it has
(no CUDA context is created); the GPU's name is read when the choice is described in the log.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

__all__ = ["AUTO", "DEVICE_HELP", "DeviceChoice", "current_gpu", "resolve_device"]

AUTO = "auto"
DEVICE_HELP = "auto (default: CUDA when available, else CPU), cpu, cuda or cuda:N"
_CUDA = re.compile(r"cuda(?::(\d+))?")


@dataclass(frozen=True)
class DeviceChoice:
    """The device to compute on, and why it was chosen (for the log)."""

    device: torch.device
    why: str  # "auto: CUDA available", "auto: no CUDA device (...)" or "as asked"

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        """The device as torch names it, with the GPU's index: cpu, cuda:0, ..."""
        if self.device.type == "cuda" and self.device.index is None:
            return f"cuda:{torch.cuda.current_device()}"
        return str(self.device)

    @property
    def model(self) -> str:
        """The GPU's model name (empty for the CPU); reads it from torch, which initialises CUDA."""
        if self.device.type != "cuda":
            return ""
        return torch.cuda.get_device_name(self.device)

    def describe(self) -> str:
        """e.g. "cuda:0 (NVIDIA GeForce RTX 4070, auto: CUDA available)" or "cpu (auto: no CUDA device)"."""
        details = ", ".join(part for part in (self.model, self.why) if part)
        return f"{self.name} ({details})"


def _no_cuda_reason() -> str:
    """Why torch sees no CUDA GPU, as far as it can tell."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA: install a CUDA build of torch"
    return "torch finds no CUDA GPU (driver missing, or CUDA_VISIBLE_DEVICES hides them)"


def resolve_device(asked: str | torch.device | None = AUTO, flag: str = "--device") -> DeviceChoice:
    """The device `asked` means on this machine; a ValueError naming `flag` and the value if it cannot be
    used. None is `auto`."""
    text = AUTO if asked is None else str(asked).strip().lower()
    if text == AUTO:
        if torch.cuda.is_available():
            return DeviceChoice(torch.device("cuda"), "auto: CUDA available")
        built = "" if torch.version.cuda else f"; torch {torch.__version__} is built without CUDA"
        return DeviceChoice(torch.device("cpu"), f"auto: no CUDA device{built}")
    if text == "cpu":
        return DeviceChoice(torch.device("cpu"), "as asked")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise ValueError(f"{flag} {asked}: unknown device; valid: {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"{flag} {asked}: no CUDA GPU is available to torch on this machine ({_no_cuda_reason()}); "
            f"use {flag} cpu, or {flag} auto to take a GPU when there is one"
        )
    if match.group(1) is None:
        return DeviceChoice(torch.device("cuda"), "as asked")
    index, count = int(match.group(1)), torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"{flag} {asked}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; "
            "choose one of them (nvidia-smi lists them)"
        )
    return DeviceChoice(torch.device("cuda", index), "as asked")


def current_gpu(device: torch.device) -> contextlib.AbstractContextManager:
    """On `cuda:N`, GPU N is torch's current device within the block, restored after: what launches on the
    current device (Triton kernels, torch.cuda calls without a device) goes to the tensors' GPU. Anything
    else (the CPU, `cuda` without an index): nothing changes."""
    if device.type != "cuda" or device.index is None:
        return contextlib.nullcontext()
    return torch.cuda.device(device)
