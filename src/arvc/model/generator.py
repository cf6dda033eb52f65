"""The RVC v2 synthesizer (``SynthesizerTrnMs768NSFsid``): a VITS-style conditional VAE.

Training path: the posterior encoder ``enc_q`` turns the target's linear spectrogram into a
latent ``z``; the flow maps ``z`` to ``z_p``, which the KL loss pulls towards the prior
``(m_p, logs_p)`` that the text encoder ``enc_p`` predicts from content features + coarse
pitch; the NSF decoder ``dec`` turns a random slice of ``z`` (and the fine F0) into audio.
Inference samples ``z_p`` from the prior, inverts the flow and decodes.  Every submodule
name and shape matches RVC, so RVC's pretrained weights and checkpoints load strictly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import RunConfig
from . import attentions, noise
from .commons import rand_slice_segments, sequence_mask, slice_segments
from .modules import WN, Flip, ResidualCouplingLayer
from .norm import remove_all_weight_norm
from .nsf import GeneratorNSF

__all__ = ["PosteriorEncoder", "ResidualCouplingBlock", "Synthesizer", "TextEncoder"]

# Fixed in RVC's code (not in its configs): posterior WaveNet and flow sizes.
POSTERIOR_KERNEL, POSTERIOR_LAYERS = 5, 16
FLOW_KERNEL, FLOW_LAYERS, N_FLOWS = 5, 3, 4
# RVC samples the prior with a 0.66666 temperature at inference.
DEFAULT_NOISE_SCALE = 0.66666


class TextEncoder(nn.Module):
    """Prior encoder: content features + quantised pitch -> prior mean/log-std per frame."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        f0: bool = True,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.emb_phone = nn.Linear(in_channels, hidden_channels)
        self.lrelu = nn.LeakyReLU(0.1)
        if f0:
            self.emb_pitch = nn.Embedding(256, hidden_channels)  # coarse pitch bins 1..255
        self.encoder = attentions.Encoder(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout
        )
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, phone: torch.Tensor, pitch: torch.Tensor | None, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``phone [B, T, F]``, ``pitch [B, T]`` (long) -> ``m, logs [B, C, T]``, ``x_mask [B, 1, T]``."""
        x = self.emb_phone(phone)
        if pitch is not None:
            x = x + self.emb_pitch(pitch)
        x = self.lrelu(x * math.sqrt(self.hidden_channels)).transpose(1, -1)
        x_mask = sequence_mask(lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return m, logs, x_mask


class PosteriorEncoder(nn.Module):
    """Linear spectrogram -> sampled latent ``z`` and its Gaussian parameters."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, x: torch.Tensor, x_lengths: torch.Tensor, g: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x_mask = sequence_mask(x_lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        x = self.enc(self.pre(x) * x_mask, x_mask, g=g)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + noise.randn_like("posterior", m, x_lengths) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


class ResidualCouplingBlock(nn.Module):
    """Stack of mean-only coupling layers, each followed by a channel flip (volume preserving)."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        n_flows: int = 4,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                ResidualCouplingLayer(
                    channels,
                    hidden_channels,
                    kernel_size,
                    dilation_rate,
                    n_layers,
                    gin_channels=gin_channels,
                    mean_only=True,
                )
            )
            self.flows.append(Flip())

    def forward(
        self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> torch.Tensor:
        flows = reversed(self.flows) if reverse else self.flows
        for flow in flows:
            x = flow(x, x_mask, g=g, reverse=reverse)
        return x


class Synthesizer(nn.Module):
    """RVC v2 generator (``SynthesizerTrnMs768NSFsid``) built from a :class:`RunConfig`.

    ``data.feature_dim`` sets the content-feature width (768 for HuBERT; 256 gives RVC v1's
    ``SynthesizerTrnMs256NSFsid`` layout). ``f0=False`` builds RVC's model without pitch guidance
    (``SynthesizerTrnMs768NSFsid_nono`` / ``SynthesizerTrnMs256NSFsid_nono``: no pitch embedding, a plain
    HiFi-GAN decoder) to run RVC's f0=0 files: :meth:`infer` only (arvc trains pitch-guided models).
    """

    def __init__(self, cfg: RunConfig, f0: bool = True) -> None:
        super().__init__()
        self.f0 = f0
        m, d = cfg.model, cfg.data
        self.segment_size = cfg.segment_frames
        self.hop_length = d.hop_length
        self.sampling_rate = d.sampling_rate
        # Registration order follows RVC's classes: v2 deletes and re-creates enc_p last, v1 builds it first;
        # parameters then enumerate in RVC's order, so RVC optimizer states line up too.
        text_encoder = lambda: TextEncoder(  # noqa: E731
            d.feature_dim,
            m.inter_channels,
            m.hidden_channels,
            m.filter_channels,
            m.n_heads,
            m.n_layers,
            m.kernel_size,
            m.p_dropout,
            f0=f0,
        )
        if cfg.version == "v1":
            self.enc_p = text_encoder()
        self.dec = GeneratorNSF(
            m.inter_channels,
            m.resblock,
            m.resblock_kernel_sizes,
            m.resblock_dilation_sizes,
            m.upsample_rates,
            m.upsample_initial_channel,
            m.upsample_kernel_sizes,
            gin_channels=m.gin_channels,
            sr=d.sampling_rate,
            pitch=f0,
        )
        self.enc_q = PosteriorEncoder(
            cfg.spec_channels,
            m.inter_channels,
            m.hidden_channels,
            POSTERIOR_KERNEL,
            1,
            POSTERIOR_LAYERS,
            gin_channels=m.gin_channels,
        )
        self.flow = ResidualCouplingBlock(
            m.inter_channels,
            m.hidden_channels,
            FLOW_KERNEL,
            1,
            FLOW_LAYERS,
            N_FLOWS,
            gin_channels=m.gin_channels,
        )
        self.emb_g = nn.Embedding(m.spk_embed_dim, m.gin_channels)
        if cfg.version != "v1":
            self.enc_p = text_encoder()

    def forward(
        self,
        phone: torch.Tensor,
        phone_lengths: torch.Tensor,
        pitch: torch.Tensor,
        pitchf: torch.Tensor,
        spec: torch.Tensor,
        spec_lengths: torch.Tensor,
        sid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """One training pass.

        Shapes: ``phone [B, T, F]`` float, ``pitch [B, T]`` long (coarse bins), ``pitchf
        [B, T]`` float (Hz), ``spec [B, n_fft//2+1, T]``, lengths ``[B]``, ``sid [B]`` long.
        Returns ``(audio [B, 1, segment_size*hop], ids_slice [B], x_mask, z_mask,
        (z, z_p, m_p, logs_p, m_q, logs_q))`` exactly like RVC; ``ids_slice`` is in frames.
        """
        g = self.emb_g(sid).unsqueeze(-1)
        m_p, logs_p, x_mask = self.enc_p(phone, pitch, phone_lengths)
        z, m_q, logs_q, z_mask = self.enc_q(spec, spec_lengths, g=g)
        z_p = self.flow(z, z_mask, g=g)
        z_slice, ids_slice = rand_slice_segments(z, spec_lengths, self.segment_size)
        pitchf = slice_segments(pitchf, ids_slice, self.segment_size)
        audio = self.dec(z_slice, pitchf, g=g)
        return audio, ids_slice, x_mask, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q)

    @torch.no_grad()
    def infer(
        self,
        phone: torch.Tensor,
        phone_lengths: torch.Tensor,
        pitch: torch.Tensor | None,
        nsff0: torch.Tensor | None,
        sid: torch.Tensor,
        noise_scale: float = DEFAULT_NOISE_SCALE,
    ) -> torch.Tensor:
        """Convert: sample the prior (temperature ``noise_scale``), invert the flow, decode.

        Returns audio ``[B, 1, T*hop]``; frames past ``phone_lengths`` decode from zeros. A model without
        pitch guidance (``f0=False``) ignores `pitch` and `nsff0` (pass None).
        """
        if not self.f0:
            pitch = nsff0 = None
        g = self.emb_g(sid).unsqueeze(-1)
        m_p, logs_p, x_mask = self.enc_p(phone, pitch, phone_lengths)
        z_p = (m_p + torch.exp(logs_p) * torch.randn_like(m_p) * noise_scale) * x_mask
        z = self.flow(z_p, x_mask, g=g, reverse=True)
        return self.dec(z * x_mask, nsff0, g=g)

    def remove_weight_norm(self) -> None:
        """Fold weight norm everywhere (decoder, flow, posterior encoder) for inference."""
        remove_all_weight_norm(self)
