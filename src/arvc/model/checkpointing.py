"""Activation checkpointing of the models' largest blocks: fewer activations kept, one more forward.

The blocks are the decoder's residual blocks (`GeneratorNSF.resblocks`: the generator's widest tensors, at
up to the audio rate) and each sub-discriminator of `MultiPeriodDiscriminator`. Switched on, a block keeps
only its inputs for backward and runs again when backward reaches it (`torch.utils.checkpoint`, the
non-reentrant kind, with the RNG state preserved): the gradients are the same bit for bit on a CPU. None of
these blocks draws random numbers, which matters: a recompute runs outside `arvc.model.noise.per_item_noise`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpointed", "checkpointed_blocks", "set_checkpointing"]


def checkpointed(block: nn.Module, *args: torch.Tensor, enabled: bool):
    """`block(*args)`; with `enabled`, and only where a graph is being built, checkpointed."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, preserve_rng_state=True)
    return block(*args)


def set_checkpointing(net_g: nn.Module, net_d: nn.Module, on: bool) -> None:
    """Switch checkpointing of the blocks of a `Synthesizer` and a `MultiPeriodDiscriminator`."""
    net_g.dec.checkpointing = bool(on)
    net_d.checkpointing = bool(on)


def checkpointed_blocks(net_g: nn.Module, net_d: nn.Module) -> list[nn.Module]:
    """The blocks `set_checkpointing` switches (the memory estimate weighs what each keeps)."""
    return [*net_g.dec.resblocks, *net_d.discriminators]
