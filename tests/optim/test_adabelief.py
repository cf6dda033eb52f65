"""AdaBelief and AdaBeliefV2 against adabelief-pytorch 0.2.1 and a float64 recomputation."""

import math
import warnings

import pytest
import torch
from _optim_helpers import feed, gradient_stream, make_model, two_groups

from arvc.optim import AdaBelief, AdaBeliefV2

adabelief_pytorch = pytest.importorskip("adabelief_pytorch")


def reference(params, amsgrad, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return adabelief_pytorch.AdaBelief(
            params, rectify=False, weight_decouple=True, amsgrad=amsgrad, print_change_log=False, **kwargs
        )


@pytest.mark.parametrize("cls, amsgrad", [(AdaBelief, False), (AdaBeliefV2, True)])
def test_matches_adabelief_pytorch(cls, amsgrad):
    """Tolerance: 1e-5 relative per element over 200 steps (the issue's bound)."""
    ours_model, ref_model = make_model(), make_model()
    # adabelief-pytorch applies one weight decay to all groups, so both groups share it here.
    ours = cls(two_groups(ours_model, weight_decay=(0.05, 0.05)), lr=1e-2, eps=1e-12)
    ref = reference(two_groups(ref_model, weight_decay=(0.05, 0.05)), amsgrad, lr=1e-2, eps=1e-12)
    shapes = [p.shape for p in ours_model.parameters()]
    for grads in gradient_stream(shapes, 200):
        feed(ours, list(ours_model.parameters()), grads)
        feed(ref, list(ref_model.parameters()), grads)
    for p, q in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def float64_adabelief(start, grads, lr, beta1, beta2, eps, weight_decay, amsgrad):
    """A plain-Python float64 transcription of the documented update rule (one scalar parameter)."""
    p, m, s, s_max = start, 0.0, 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        p *= 1 - lr * weight_decay
        if beta1 == 0.0:
            residual, m = g - m, g
        else:
            m = beta1 * m + (1 - beta1) * g
            residual = g - m
        s = beta2 * s + (1 - beta2) * residual**2 + eps
        s_max = max(s_max, s)
        belief = s_max if amsgrad else s
        p -= lr / (1 - beta1**t) * m / (math.sqrt(belief / (1 - beta2**t)) + eps)
    return p


@pytest.mark.parametrize("cls, amsgrad", [(AdaBelief, False), (AdaBeliefV2, True)])
@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_matches_float64_recomputation(cls, amsgrad, beta1):
    grads = [math.sin(0.3 * t) + 0.5 for t in range(150)]
    param = torch.nn.Parameter(torch.tensor([0.7], dtype=torch.float64))
    optimizer = cls([param], lr=1e-2, betas=(beta1, 0.99), eps=1e-8, weight_decay=0.1)
    for g in grads:
        param.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
    expected = float64_adabelief(0.7, grads, 1e-2, beta1, 0.99, 1e-8, 0.1, amsgrad)
    assert param.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("cls", [AdaBelief, AdaBeliefV2])
def test_beta1_zero_stays_finite_and_first_step_is_adams(cls):
    param = torch.nn.Parameter(torch.randn(64))
    start = param.detach().clone()
    optimizer = cls([param], lr=1e-3, betas=(0.0, 0.999))
    grads = gradient_stream([param.shape], 300, seed=9)
    feed(optimizer, [param], grads[0])
    # Step 1: residual is the gradient itself, so the step is lr·g/(|g| + ε) ≈ lr·sign(g), as Adam's.
    torch.testing.assert_close(param.detach(), start - 1e-3 * torch.sign(grads[0][0]), rtol=0, atol=1e-9)
    for step_grads in grads[1:]:
        feed(optimizer, [param], step_grads)
    assert torch.isfinite(param).all()
    assert (param.detach() - start).abs().max() < 300 * 1e-3 * 10


def test_reference_explodes_at_beta1_zero():
    """Why arvc deviates at β1 = 0: the reference's step becomes lr·g/√ε after one step."""
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = reference([param], False, lr=1e-3, betas=(0.0, 0.999))
    for _ in range(3):
        param.grad = torch.full((4,), 0.5)
        optimizer.step()
    assert not torch.isfinite(param).all() or param.detach().abs().max() > 1e3


@pytest.mark.parametrize("cls", [AdaBelief, AdaBeliefV2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_params_take_the_fp32_step_rounded_once(cls, dtype):
    """Tiny gradients (g² underflows in fp16): state stays fp32 and each step is the fp32 step, rounded.

    Without weight decay the state does not depend on the parameter, so an fp32 run fed the same
    gradients gives the exact update; the low-precision parameter must be its previous value plus
    that update, rounded once (at most one unit in the last place away).
    """
    start = (torch.randn(256) * 10).to(dtype)
    low = torch.nn.Parameter(start.clone())
    full = torch.nn.Parameter(start.float())
    low_opt, full_opt = cls([low], lr=1e-2), cls([full], lr=1e-2)
    mantissa_bits = 10 if dtype == torch.float16 else 7
    for (grad,) in gradient_stream([start.shape], 50, seed=4, scale=1e-4):
        before_low, before_full = low.detach().float(), full.detach().clone()
        feed(low_opt, [low], [grad.to(dtype).float()])
        feed(full_opt, [full], [grad.to(dtype).float()])
        expected = before_low + (full.detach() - before_full)
        ulp = 2.0 ** (torch.floor(torch.log2(expected.abs())) - mantissa_bits)
        assert ((low.detach().float() - expected).abs() <= ulp).all()
    assert low_opt.state[low]["exp_avg_var"].dtype == torch.float32
    assert torch.isfinite(low).all()


def test_amsgrad_denominator_never_shrinks():
    param = torch.nn.Parameter(torch.zeros(32))
    optimizer = AdaBeliefV2([param], lr=1e-3)
    previous = torch.zeros(32)
    for step, (grad,) in enumerate(gradient_stream([param.shape], 40, seed=8)):
        feed(optimizer, [param], [grad * (10.0 if step < 5 else 0.1)])
        current = optimizer.state[param]["max_exp_avg_var"].clone()
        assert (current >= previous).all()
        previous = current
