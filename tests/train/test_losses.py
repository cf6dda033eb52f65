"""GAN/VAE losses against float64 computations written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from arvc.train.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss, kl_loss


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def _outputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, n, generator=g) for n in (3, 5, 1)]


def test_discriminator_loss():
    real, fake = _outputs(0), _outputs(1)
    total, r_terms, g_terms = discriminator_loss(real, fake)
    expected_r = [_mean((1 - v) ** 2 for v in r.double().flatten()) for r in real]
    expected_g = [_mean(v**2 for v in f.double().flatten()) for f in fake]
    assert [float(t) for t in r_terms] == pytest.approx(expected_r, rel=1e-6)
    assert [float(t) for t in g_terms] == pytest.approx(expected_g, rel=1e-6)
    assert float(total) == pytest.approx(sum(expected_r) + sum(expected_g), rel=1e-6)
    assert not r_terms[0].requires_grad


def test_generator_adversarial_loss():
    fake = [t.requires_grad_() for t in _outputs(2)]
    total, terms = generator_adversarial_loss(fake)
    expected = [_mean((1 - v) ** 2 for v in f.detach().double().flatten()) for f in fake]
    assert [float(t) for t in terms] == pytest.approx(expected, rel=1e-6)
    assert float(total.detach()) == pytest.approx(sum(expected), rel=1e-6)
    total.backward()
    # d/dx mean((1-x)^2) = -2 (1 - x) / n
    f0 = fake[0]
    assert torch.allclose(f0.grad, -2 * (1 - f0.detach()) / f0.numel(), atol=1e-6)


def test_losses_accept_half_precision_inputs():
    fake = [t.half() for t in _outputs(3)]
    total, _ = generator_adversarial_loss(fake)
    assert total.dtype == torch.float32


def test_feature_matching_loss():
    g = torch.Generator().manual_seed(4)
    fmap_r = [
        [torch.randn(2, 3, 4, generator=g), torch.randn(2, 1, 5, generator=g)],
        [torch.randn(1, 6, generator=g)],
    ]
    fmap_g = [[torch.randn_like(t).requires_grad_() for t in layer] for layer in fmap_r]
    for layer in fmap_r:
        for t in layer:
            t.requires_grad_()
    loss = feature_matching_loss(fmap_r, fmap_g)
    expected = sum(
        _mean(
            abs(a - b)
            for a, b in zip(r.detach().double().flatten(), f.detach().double().flatten(), strict=True)
        )
        for lr, lg in zip(fmap_r, fmap_g, strict=True)
        for r, f in zip(lr, lg, strict=True)
    )
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert fmap_r[0][0].grad is None  # real features are targets, not trained through
    assert fmap_g[0][0].grad is not None


def test_kl_loss():
    g = torch.Generator().manual_seed(5)
    b, c, t = 2, 3, 6
    z_p, logs_q, m_p, logs_p = (torch.randn(b, c, t, generator=g) * 0.5 for _ in range(4))
    z_mask = torch.ones(b, 1, t)
    z_mask[1, :, 4:] = 0
    loss = kl_loss(z_p, logs_q, m_p, logs_p, z_mask)
    total, count = 0.0, 0.0
    for i in range(b):
        for k in range(t):
            mask = float(z_mask[i, 0, k])
            count += mask
            for j in range(c):
                zp, lq, mp, lp = (float(x[i, j, k]) for x in (z_p, logs_q, m_p, logs_p))
                total += mask * (lp - lq - 0.5 + 0.5 * (zp - mp) ** 2 * math.exp(-2 * lp))
    assert float(loss) == pytest.approx(total / count, rel=1e-5)


def test_kl_loss_is_zero_for_matching_unit_gaussians_on_average():
    torch.manual_seed(0)
    m = torch.zeros(1, 4, 20000)
    logs = torch.zeros_like(m)
    z_p = torch.randn_like(m)
    # E[logs_p - logs_q - 1/2 + z^2/2] = 0 per channel when q = p = N(0, 1).
    loss = kl_loss(z_p, logs, m, logs, torch.ones(1, 1, 20000))
    assert abs(float(loss)) < 4 * 0.05
