"""GAN and VAE losses of RVC training (LSGAN, feature matching, KL).

All losses compute in float32 even when their inputs come from autocast, as RVC does, so
mixed-precision runs do not lose the small differences these sums are made of.  Per-
discriminator terms come back as detached tensors (no ``.item()``: no device sync here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["discriminator_loss", "feature_matching_loss", "generator_adversarial_loss", "kl_loss"]


def discriminator_loss(
    real_outputs: Sequence[torch.Tensor], fake_outputs: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """LSGAN discriminator loss: sum over discriminators of ``mean((1 - D(y))^2) + mean(D(y_hat)^2)``.

    Returns ``(total, per-discriminator real terms, per-discriminator fake terms)``.
    """
    total = torch.zeros((), device=real_outputs[0].device)
    r_losses, g_losses = [], []
    for dr, dg in zip(real_outputs, fake_outputs, strict=True):
        r_loss = torch.mean((1 - dr.float()) ** 2)
        g_loss = torch.mean(dg.float() ** 2)
        total = total + r_loss + g_loss
        r_losses.append(r_loss.detach())
        g_losses.append(g_loss.detach())
    return total, r_losses, g_losses


def generator_adversarial_loss(
    fake_outputs: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """LSGAN generator loss: sum over discriminators of ``mean((1 - D(y_hat))^2)``.

    Returns ``(total, per-discriminator terms)`` (RVC's ``generator_loss``).
    """
    total = torch.zeros((), device=fake_outputs[0].device)
    terms = []
    for dg in fake_outputs:
        term = torch.mean((1 - dg.float()) ** 2)
        total = total + term
        terms.append(term.detach())
    return total, terms


def feature_matching_loss(
    fmap_r: Sequence[Sequence[torch.Tensor]], fmap_g: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """Sum over every discriminator layer of ``mean(|F_real - F_fake|)``, real maps detached.

    Unscaled: RVC's ``feature_loss`` multiplies this by 2, which ``train.c_fm = 2`` reproduces.
    """
    total = torch.zeros((), device=fmap_g[0][0].device)
    for dr, dg in zip(fmap_r, fmap_g, strict=True):
        for rl, gl in zip(dr, dg, strict=True):
            total = total + torch.mean(torch.abs(rl.float().detach() - gl.float()))
    return total


def kl_loss(
    z_p: torch.Tensor,
    logs_q: torch.Tensor,
    m_p: torch.Tensor,
    logs_p: torch.Tensor,
    z_mask: torch.Tensor,
    frames: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL between posterior and prior, estimated at the flowed sample ``z_p`` (VITS/RVC).

    Per element ``logs_p - logs_q - 1/2 + (z_p - m_p)^2 / (2 exp(2 logs_p))``, summed under
    ``z_mask`` and divided by the mask's sum (so by valid frames, not frames x channels).
    All inputs are ``[B, C, T]`` except ``z_mask [B, 1, T]``. ``frames`` replaces the divisor: a
    multi-process run passes the global batch's valid frames / ranks, so the ranks' mean is the KL of
    the whole batch.
    """
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / (torch.sum(z_mask) if frames is None else frames)
