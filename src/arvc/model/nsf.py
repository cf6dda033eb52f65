"""NSF-HiFiGAN decoder: a HiFi-GAN upsampler driven by a sine excitation built from F0.

The harmonic source makes pitch explicit, so the vocoder only has to shape timbre; it is
injected at every upsampling stage through strided "noise convs".  Layout and behaviour follow
RVC's ``GeneratorNSF``; randomness comes from torch's global RNG, so seeding reproduces a run (in
training, from per-item generators: see :mod:`.noise`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import noise
from .checkpointing import checkpointed
from .modules import LRELU_SLOPE, ResBlock1, ResBlock2
from .norm import WNConvTranspose1d, remove_all_weight_norm

__all__ = ["GeneratorNSF", "SineGen", "SourceModuleHnNSF"]


class SineGen(nn.Module):
    """Sine waves (fundamental plus ``harmonic_num`` overtones) from frame-rate F0.

    Voiced samples get ``sine_amp * sin(phase)`` plus small noise (``noise_std``); unvoiced
    samples (F0 <= ``voiced_threshold``) get noise of std ``sine_amp / 3`` only.  Each frame's
    phase increment is held for the ``upp`` samples of that frame.  RVC accumulates the phase
    in float32 with integer wrap corrections; we accumulate in float64 and wrap with ``% 1``,
    which is the same phase mathematically and more precise.
    """

    def __init__(
        self,
        sampling_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        noise_std: float = 0.003,
        voiced_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.sampling_rate = sampling_rate
        self.harmonic_num = harmonic_num
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold

    @torch.no_grad()
    def forward(self, f0: torch.Tensor, upp: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``f0 [B, T]`` (Hz, 0 = unvoiced) -> ``(sine [B, T*upp, H], uv [B, T*upp, 1], noise)``."""
        harmonics = torch.arange(1, self.harmonic_num + 2, device=f0.device, dtype=torch.float64)
        # Cycles advanced per sample, one value per frame and harmonic: [B, T, H].
        step = (f0.double().unsqueeze(-1) * harmonics / self.sampling_rate) % 1
        # Random start phase for the overtones; the fundamental starts at 0 (drawn like RVC).
        start = noise.rand("sine_phase", f0.size(0), harmonics.numel(), device=f0.device)
        start[:, 0] = 0
        step = torch.repeat_interleave(step, upp, dim=1)
        phase = torch.cumsum(step, dim=1) + start.double().unsqueeze(1)
        sine = torch.sin(2 * math.pi * (phase % 1)).to(f0.dtype) * self.sine_amp
        uv = torch.repeat_interleave((f0 > self.voiced_threshold).to(f0.dtype), upp, dim=1).unsqueeze(-1)
        noise_amp = uv * self.noise_std + (1 - uv) * (self.sine_amp / 3)
        draw = noise_amp * noise.randn_like("sine_noise", sine)
        return sine * uv + draw, uv, draw


class SourceModuleHnNSF(nn.Module):
    """Merge the sine harmonics into one excitation channel with a learned linear + tanh."""

    def __init__(
        self,
        sampling_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        add_noise_std: float = 0.003,
        voiced_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.l_sin_gen = SineGen(sampling_rate, harmonic_num, sine_amp, add_noise_std, voiced_threshold)
        self.l_linear = nn.Linear(harmonic_num + 1, 1)
        self.l_tanh = nn.Tanh()

    def forward(self, f0: torch.Tensor, upp: int) -> torch.Tensor:
        """``f0 [B, T]`` -> excitation ``[B, T*upp, 1]``."""
        sine, _, _ = self.l_sin_gen(f0, upp)
        return self.l_tanh(self.l_linear(sine.to(self.l_linear.weight.dtype)))


class GeneratorNSF(nn.Module):
    """HiFi-GAN generator with an NSF excitation added after every upsampling layer.

    ``pitch=False`` builds RVC's plain HiFi-GAN ``Generator`` of its no-f0 ("nono") models instead: no
    excitation source, no ``m_source``/``noise_convs`` (inference of RVC's nono files only)."""

    def __init__(
        self,
        initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: list[int],
        resblock_dilation_sizes: list[list[int]],
        upsample_rates: list[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: list[int],
        gin_channels: int,
        sr: int,
        pitch: bool = True,
    ) -> None:
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.upp = math.prod(upsample_rates)
        block = ResBlock1 if resblock == "1" else ResBlock2
        # Registration order mirrors RVC so parameters enumerate in the same order.
        if pitch:
            self.m_source = SourceModuleHnNSF(sampling_rate=sr, harmonic_num=0)
            self.noise_convs = nn.ModuleList()
        self.conv_pre = nn.Conv1d(initial_channel, upsample_initial_channel, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True)):
            c_in, c_out = upsample_initial_channel // 2**i, upsample_initial_channel // 2 ** (i + 1)
            self.ups.append(WNConvTranspose1d(c_in, c_out, k, u, padding=(k - u) // 2))
            stride = math.prod(upsample_rates[i + 1 :])
            if pitch and stride > 1:  # bring the sample-rate excitation down to this stage's rate
                self.noise_convs.append(nn.Conv1d(1, c_out, stride * 2, stride=stride, padding=stride // 2))
            elif pitch:
                self.noise_convs.append(nn.Conv1d(1, c_out, 1))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            ch = upsample_initial_channel // 2 ** (i + 1)
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(block(ch, k, d))
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=False)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)
        self.checkpointing = False  # recompute the resblocks in backward (arvc.model.checkpointing)

    def forward(
        self, x: torch.Tensor, f0: torch.Tensor | None, g: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Latent ``x [B, C, T]``, ``f0 [B, T]`` (Hz; None without pitch), speaker ``g [B, gin, 1]`` ->
        ``[B, 1, T*upp]``."""
        pitch = hasattr(self, "m_source")
        source = self.m_source(f0, self.upp).transpose(1, 2) if pitch else None
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            if pitch:
                x = x + self.noise_convs[i](source)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(checkpointed(block, x, enabled=self.checkpointing) for block in blocks) / self.num_kernels
        # The final activation uses leaky_relu's default slope (0.01), as in RVC.
        x = self.conv_post(F.leaky_relu(x))
        return torch.tanh(x)

    def remove_weight_norm(self) -> None:
        remove_all_weight_norm(self)
