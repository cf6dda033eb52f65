"""RVC v2's multi-period discriminator (``MultiPeriodDiscriminatorV2``).

One waveform discriminator (``DiscriminatorS``, strided grouped 1-D convs) plus one 2-D
discriminator per period, each looking at the wave folded into ``[T / p, p]`` so it sees
sample-exact periodic structure.  ``model.disc_channel_div`` shrinks every width (and the
group counts with it) for fast tests; at 1 the layout is exactly RVC's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import RunConfig
from .checkpointing import checkpointed
from .commons import get_padding
from .modules import LRELU_SLOPE
from .norm import WNConv1d, WNConv2d

__all__ = ["DiscriminatorP", "DiscriminatorS", "MultiPeriodDiscriminator"]

# RVC's widths and group counts.
_S_CHANNELS = [16, 64, 256, 1024, 1024, 1024]
_S_GROUPS = [1, 4, 16, 64, 256, 1]
_S_KERNELS = [15, 41, 41, 41, 41, 5]
_S_STRIDES = [1, 4, 4, 4, 4, 1]
_P_CHANNELS = [32, 128, 512, 1024, 1024]


def _conv1d(use_spectral_norm: bool, *args, **kwargs) -> nn.Module:
    if use_spectral_norm:
        return nn.utils.spectral_norm(nn.Conv1d(*args, **kwargs))
    return WNConv1d(*args, **kwargs)


def _conv2d(use_spectral_norm: bool, *args, **kwargs) -> nn.Module:
    if use_spectral_norm:
        return nn.utils.spectral_norm(nn.Conv2d(*args, **kwargs))
    return WNConv2d(*args, **kwargs)


def _conv_stack(
    convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What both discriminators run on their input: each conv then leaky ReLU (its output a feature map),
    the last conv's output (a feature map too) flattened to the logits."""
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


class DiscriminatorS(nn.Module):
    """Waveform-scale discriminator; returns (flattened logits, feature maps)."""

    def __init__(self, use_spectral_norm: bool = False, channel_div: int = 1) -> None:
        super().__init__()
        chans = [max(1, c // channel_div) for c in _S_CHANNELS]
        groups = [max(1, g // channel_div) for g in _S_GROUPS]
        c_in = [1, *chans[:-1]]
        self.convs = nn.ModuleList(
            _conv1d(use_spectral_norm, ci, co, k, s, groups=g, padding=get_padding(k))
            for ci, co, k, s, g in zip(c_in, chans, _S_KERNELS, _S_STRIDES, groups, strict=True)
        )
        self.conv_post = _conv1d(use_spectral_norm, chans[-1], 1, 3, 1, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _conv_stack(self.convs, self.conv_post, x)


class DiscriminatorP(nn.Module):
    """Period-``p`` discriminator: (5, 1) convs with stride 3 over the folded wave."""

    def __init__(
        self,
        period: int,
        kernel_size: int = 5,
        stride: int = 3,
        use_spectral_norm: bool = False,
        channel_div: int = 1,
    ) -> None:
        super().__init__()
        self.period = period
        chans = [max(1, c // channel_div) for c in _P_CHANNELS]
        c_in = [1, *chans[:-1]]
        strides = [stride] * (len(chans) - 1) + [1]
        pad = (get_padding(kernel_size, 1), 0)
        self.convs = nn.ModuleList(
            _conv2d(use_spectral_norm, ci, co, (kernel_size, 1), (s, 1), padding=pad)
            for ci, co, s in zip(c_in, chans, strides, strict=True)
        )
        self.conv_post = _conv2d(use_spectral_norm, chans[-1], 1, (3, 1), 1, padding=(1, 0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            n_pad = self.period - t % self.period
            x = F.pad(x, (0, n_pad), "reflect")
            t += n_pad
        x = x.view(b, c, t // self.period, self.period)
        return _conv_stack(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    """``DiscriminatorS`` plus one ``DiscriminatorP`` per ``model.disc_periods`` entry."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        m = cfg.model
        discs: list[nn.Module] = [DiscriminatorS(m.use_spectral_norm, m.disc_channel_div)]
        discs += [
            DiscriminatorP(p, use_spectral_norm=m.use_spectral_norm, channel_div=m.disc_channel_div)
            for p in m.disc_periods
        ]
        self.discriminators = nn.ModuleList(discs)
        self.checkpointing = False  # recompute each sub-discriminator in backward (arvc.model.checkpointing)

    def forward(
        self, y: torch.Tensor, y_hat: torch.Tensor, real_graph: bool = True
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        """Score real ``y`` and generated ``y_hat`` (``[B, 1, T]``) with every sub-discriminator.

        Returns ``(y_d_rs, y_d_gs, fmap_rs, fmap_gs)`` as RVC does. ``real_graph=False`` scores ``y`` under
        ``no_grad`` in a pass of its own: for the generator's phase, where D is frozen and nothing needs the
        real half's gradient, which in a joint pass would sit in the backward graph and be computed anyway.
        """
        if not real_graph:
            with torch.no_grad():
                real = [disc(y) for disc in self.discriminators]
            fake = [self._run(disc, y_hat) for disc in self.discriminators]
            return [r[0] for r in real], [f[0] for f in fake], [r[1] for r in real], [f[1] for f in fake]
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = [], [], [], []
        # Both waves go through in one batch (half the kernel launches and weight-norm
        # evaluations); nothing mixes batch items, so this equals two separate passes.
        joint = y.shape == y_hat.shape
        both = torch.cat([y, y_hat], 0) if joint else None
        n = y.size(0)
        for disc in self.discriminators:
            if joint:
                out, fmap = self._run(disc, both)
                y_d_r, y_d_g = out[:n], out[n:]
                fmap_r, fmap_g = [f[:n] for f in fmap], [f[n:] for f in fmap]
            else:
                y_d_r, fmap_r = self._run(disc, y)
                y_d_g, fmap_g = self._run(disc, y_hat)
            y_d_rs.append(y_d_r)
            y_d_gs.append(y_d_g)
            fmap_rs.append(fmap_r)
            fmap_gs.append(fmap_g)
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs

    def _run(self, disc: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return checkpointed(disc, x, enabled=self.checkpointing)
