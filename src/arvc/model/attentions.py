"""The content encoder's transformer: relative-position self-attention (VITS/RVC flavour).

Attention logits get a learned term for every key within ``window_size`` frames of the query
(one table shared by all heads), and outputs get a matching learned value term.  Offsets
outside the window contribute nothing.  Parameter names follow RVC's ``attentions.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FFN", "Encoder", "LayerNorm", "MultiHeadAttention"]


class LayerNorm(nn.Module):
    """Layer norm over the channel axis of ``[B, C, T]`` tensors (params ``gamma``/``beta``)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.transpose(1, -1), (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


def _band_to_full(rel: torch.Tensor, window: int) -> torch.Tensor:
    """``[..., L, 2w+1]`` per-offset values to ``[..., L, L]`` with ``out[i, j] = rel[i, j-i+w]``
    (zero where ``|j - i| > w``).

    Skew trick: with zero-padded rows of length ``M + 1`` (``M = L + 2w``) read back with
    row length ``M``, row ``i`` shifts right by ``i``, which puts offset ``r`` at column ``i + r``.
    """
    *lead, length, width = rel.shape
    m = length + 2 * window
    x = F.pad(rel, (0, m + 1 - width))
    x = x.reshape(*lead, length * (m + 1))[..., : length * m].reshape(*lead, length, m)
    return x[..., window : window + length]


def _full_to_band(p: torch.Tensor, window: int) -> torch.Tensor:
    """Inverse gather of :func:`_band_to_full`: ``[..., L, L]`` to ``[..., L, 2w+1]`` with
    ``out[i, r] = p[i, i + r - w]`` (zero off the edges)."""
    *lead, length, _ = p.shape
    m = length + 2 * window
    x = F.pad(p, (window, window)).reshape(*lead, length * m)
    x = F.pad(x, (0, length)).reshape(*lead, length, m + 1)
    return x[..., : 2 * window + 1]


class MultiHeadAttention(nn.Module):
    """Multi-head attention on ``[B, C, T]`` with 1x1-conv projections and optional relative
    position terms (RVC always uses ``window_size=10`` in the encoder)."""

    def __init__(
        self,
        channels: int,
        out_channels: int,
        n_heads: int,
        p_dropout: float = 0.0,
        window_size: int | None = None,
    ) -> None:
        super().__init__()
        if channels % n_heads:
            raise ValueError("channels must be divisible by n_heads")
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        if window_size is not None:
            std = self.k_channels**-0.5
            span = 2 * window_size + 1
            self.emb_rel_k = nn.Parameter(torch.randn(1, span, self.k_channels) * std)
            self.emb_rel_v = nn.Parameter(torch.randn(1, span, self.k_channels) * std)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = self.conv_q(x), self.conv_k(c), self.conv_v(c)
        batch, channels, t_k = k.shape
        t_q = q.size(2)

        def heads(t: torch.Tensor, length: int) -> torch.Tensor:
            return t.view(batch, self.n_heads, self.k_channels, length).transpose(2, 3)

        q = heads(q, t_q) / math.sqrt(self.k_channels)
        k, v = heads(k, t_k), heads(v, t_k)
        scores = torch.matmul(q, k.transpose(-2, -1))
        if self.window_size is not None:
            if t_q != t_k:
                raise ValueError("relative attention needs self-attention (equal lengths)")
            rel_logits = torch.matmul(q, self.emb_rel_k.unsqueeze(0).transpose(-2, -1))
            scores = scores + _band_to_full(rel_logits, self.window_size)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask == 0, -1e4)
        p_attn = self.drop(F.softmax(scores, dim=-1))
        out = torch.matmul(p_attn, v)
        if self.window_size is not None:
            out = out + torch.matmul(_full_to_band(p_attn, self.window_size), self.emb_rel_v.unsqueeze(0))
        out = out.transpose(2, 3).contiguous().view(batch, channels, t_q)
        return self.conv_o(out)


class FFN(nn.Module):
    """Position-wise conv feed-forward block with 'same' padding and masking before each conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filter_channels: int,
        kernel_size: int,
        p_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(F.pad(x * x_mask, self.pad)))
        x = self.conv_2(F.pad(self.drop(x) * x_mask, self.pad))
        return x * x_mask


class Encoder(nn.Module):
    """Post-norm transformer encoder: attention and FFN sublayers with residual + LayerNorm."""

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int = 1,
        p_dropout: float = 0.0,
        window_size: int = 10,
    ) -> None:
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_2 = nn.ModuleList()
        for _ in range(n_layers):
            self.attn_layers.append(
                MultiHeadAttention(hidden_channels, hidden_channels, n_heads, p_dropout, window_size)
            )
            self.norm_layers_1.append(LayerNorm(hidden_channels))
            self.ffn_layers.append(
                FFN(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout)
            )
            self.norm_layers_2.append(LayerNorm(hidden_channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for attn, norm1, ffn, norm2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            x = norm1(x + self.drop(attn(x, x, attn_mask)))
            x = norm2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask
