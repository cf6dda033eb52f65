"""Shared helpers for the optimizer tests (imported, not a conftest, so the names stay explicit)."""

import torch


def make_model(dtype=torch.float32, seed=0):
    """A small two-layer model; two param groups are built from its layers in tests."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    return model.to(dtype)


def two_groups(model, lr=(1e-2, 3e-3), weight_decay=(0.1, 0.0)):
    first, second = model[0], model[2]
    return [
        {"params": list(first.parameters()), "lr": lr[0], "weight_decay": weight_decay[0]},
        {"params": list(second.parameters()), "lr": lr[1], "weight_decay": weight_decay[1]},
    ]


def gradient_stream(shapes, steps, seed=1, scale=1.0):
    """A fixed sequence of gradients, so two optimizers can be fed exactly the same ones."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=generator) * scale for s in shapes] for _ in range(steps)]


def feed(optimizer, params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = g.to(p.dtype).clone()
    optimizer.step()
