"""Small tensor helpers shared by the generator, discriminator and training loop."""

from __future__ import annotations

import torch
from torch import nn

from . import noise

__all__ = [
    "count_parameters",
    "gated_activation",
    "get_padding",
    "rand_slice_segments",
    "sequence_mask",
    "slice_segments",
]


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding for an odd kernel with the given dilation."""
    return (kernel_size * dilation - dilation) // 2


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Boolean ``[B, T]`` mask, True inside each sequence."""
    if max_length is None:
        max_length = int(lengths.max())
    steps = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def slice_segments(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """Cut ``x[b, ..., starts[b]:starts[b] + size]`` for every batch item.

    Works for ``[B, T]`` and ``[B, C, T]`` (RVC's ``slice_segments2`` and ``slice_segments``),
    e.g. frames of a mel with ``ids_slice`` or samples of a wave with ``ids_slice * hop``.
    The slice must lie inside ``x``.
    """
    index = starts.to(device=x.device, dtype=torch.long).unsqueeze(-1) + torch.arange(size, device=x.device)
    if x.dim() == 2:
        return x.gather(1, index)
    if x.dim() == 3:
        return x.gather(2, index.unsqueeze(1).expand(-1, x.size(1), -1))
    raise ValueError(f"slice_segments expects [B, T] or [B, C, T], got {tuple(x.shape)}")


def rand_slice_segments(
    x: torch.Tensor, lengths: torch.Tensor | None, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``size``-frame window per item, drawn like RVC so seeded runs match.

    The uniform draw happens on the CPU generator (as in RVC), so the windows do not depend
    on the device.  Items shorter than ``size`` start at 0 (RVC would pick a negative start).
    In training the draw is per item (:mod:`.noise`).
    """
    batch, _, total = x.shape
    if lengths is None:
        lengths = torch.full((batch,), total, dtype=torch.long)
    max_start = lengths.to("cpu") - size + 1
    starts = (noise.rand("slice", batch) * max_start).to(dtype=torch.long).clamp_(min=0).to(x.device)
    return slice_segments(x, starts, size), starts


def gated_activation(x: torch.Tensor, n_channels: int) -> torch.Tensor:
    """WaveNet gate: tanh of the first half of the channels times sigmoid of the second."""
    return torch.tanh(x[:, :n_channels]) * torch.sigmoid(x[:, n_channels:])


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (works on meta-device modules)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
