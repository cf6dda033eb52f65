"""The training step's gradient-norm helper: measured without touching the gradients, clipped when asked."""

import torch

from arvc.train.step import _grad_norm


def _module_with_grads():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    module(torch.randn(4, 8)).sum().backward()
    return module


def test_grad_norm_without_a_clip_measures_and_leaves_the_gradients_alone():
    module = _module_with_grads()
    before = [p.grad.clone() for p in module.parameters()]
    expected = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in before])).item()
    assert abs(_grad_norm(module, None) - expected) <= 1e-6 * expected
    assert all(torch.equal(p.grad, g) for p, g in zip(module.parameters(), before, strict=True))


def test_grad_norm_with_a_clip_returns_the_norm_before_clipping_and_clips():
    module = _module_with_grads()
    total = _grad_norm(module, None)
    assert abs(_grad_norm(module, total / 2) - total) <= 1e-6 * total
    assert abs(_grad_norm(module, None) - total / 2) <= 1e-5 * total
