"""The single-tensor reference and the multi-tensor (foreach) bodies compute the same update (the
configurations: the FOREACH rows of _optim_helpers.CONFIGS).

On CPU both bodies run the same arithmetic in the same order, so they agree bit for bit — stronger
than the 1e-6 the issue asks for — including Kahan compensation and stochastic rounding.
"""

import pytest
import torch
from _optim_helpers import FOREACH, configs, feed, gradient_stream

from arvc.optim import AdaBelief, AnyPrecisionAdamW


@pytest.mark.parametrize("cls, dtype, kwargs", configs(FOREACH, "cls", "dtype", "kwargs"))
def test_foreach_equals_single_tensor(cls, dtype, kwargs):
    shapes = [(7, 5), (5,), (300,), (2, 3, 4)]
    torch.manual_seed(1)
    start = [torch.randn(s).to(dtype) for s in shapes]
    single_params = [torch.nn.Parameter(t.clone()) for t in start]
    multi_params = [torch.nn.Parameter(t.clone()) for t in start]
    groups = lambda ps: [{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "lr": 3e-3}]  # noqa: E731
    single = cls(groups(single_params), lr=1e-2, foreach=False, **kwargs)
    multi = cls(groups(multi_params), lr=1e-2, foreach=True, **kwargs)
    for step, grads in enumerate(gradient_stream(shapes, 30, seed=3)):
        if step % 7 == 3:
            grads = [g if i else None for i, g in enumerate(grads)]  # a param without grad this step
        for params, optimizer in ((single_params, single), (multi_params, multi)):
            for p, g in zip(params, grads, strict=True):
                p.grad = None if g is None else g.to(dtype).clone()
            optimizer.step()
    for p, q in zip(single_params, multi_params, strict=True):
        assert torch.equal(p, q)
        for key, value in single.state[p].items():
            assert torch.equal(value, multi.state[q][key]), key


@pytest.mark.parametrize("cls", [AdaBelief, AnyPrecisionAdamW])
def test_default_picks_foreach_for_several_tensors(cls, monkeypatch):
    import arvc.optim.adabelief as adabelief_module
    import arvc.optim.anyprecision_adamw as apa_module

    module = adabelief_module if cls is AdaBelief else apa_module
    calls = []
    for name in dir(module):
        if name.startswith(("_multi_tensor_", "_single_tensor_")):
            original = getattr(module, name)
            monkeypatch.setattr(
                module, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))
            )
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))]
    feed(cls(params), params, [torch.ones(3), torch.ones(3)])
    assert calls and calls[0].startswith("_multi_tensor_")
