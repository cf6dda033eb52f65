"""AnyPrecisionAdamW against torch.optim.AdamW (fp32) and against an fp32-master run (bf16)."""

import pytest
import torch
from _optim_helpers import feed, gradient_stream, make_model, two_groups

from arvc.optim import AnyPrecisionAdamW


def test_fp32_matches_torch_adamw_with_weight_decay_and_two_groups():
    """Tolerance: 1e-6 relative per element over 200 steps (the issue's bound)."""
    ours_model, ref_model = make_model(), make_model()
    ours = AnyPrecisionAdamW(two_groups(ours_model), betas=(0.8, 0.99), eps=1e-8)
    ref = torch.optim.AdamW(two_groups(ref_model), betas=(0.8, 0.99), eps=1e-8, foreach=False)
    shapes = [p.shape for p in ours_model.parameters()]
    for grads in gradient_stream(shapes, 200):
        feed(ours, list(ours_model.parameters()), grads)
        feed(ref, list(ref_model.parameters()), grads)
    for p, q in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)
    for p, q in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(ours.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"], rtol=1e-6, atol=0)


def _distance_to_fp32_master(use_kahan: bool, steps: int = 1000) -> float:
    torch.manual_seed(3)
    master = torch.randn(4096)
    reference = torch.nn.Parameter(master.clone())
    low = torch.nn.Parameter(master.clone().to(torch.bfloat16))
    # The reference starts from the same (bf16-representable) point as the bf16 run.
    reference.data.copy_(low.detach().float())
    ref_opt = torch.optim.AdamW([reference], lr=1e-3, weight_decay=0.01, foreach=False)
    low_opt = AnyPrecisionAdamW([low], lr=1e-3, weight_decay=0.01, use_kahan_summation=use_kahan)
    for (grad,) in gradient_stream([master.shape], steps, seed=5):
        feed(ref_opt, [reference], [grad])
        feed(low_opt, [low], [grad])
    return (low.detach().float() - reference.detach()).norm().item()


def test_kahan_tracks_fp32_master_10x_closer_than_plain_bf16():
    """Over 1000 steps plain bf16 drifts (updates under half an ulp vanish); Kahan stays at bf16 level."""
    plain = _distance_to_fp32_master(use_kahan=False)
    kahan = _distance_to_fp32_master(use_kahan=True)
    assert kahan * 10 <= plain, f"Kahan distance {kahan:.4g} vs plain bf16 {plain:.4g}"


def test_kahan_compensated_value_is_the_fp32_trajectory():
    """p + compensation is the fp32 master value up to the compensation's own bf16 rounding."""
    torch.manual_seed(4)
    start = torch.randn(1024).to(torch.bfloat16)
    reference = torch.nn.Parameter(start.float())
    low = torch.nn.Parameter(start.clone())
    ref_opt = torch.optim.AdamW([reference], lr=1e-3, weight_decay=0.0, foreach=False)
    low_opt = AnyPrecisionAdamW([low], lr=1e-3, use_kahan_summation=True)
    for (grad,) in gradient_stream([start.shape], 100, seed=6):
        feed(ref_opt, [reference], [grad])
        feed(low_opt, [low], [grad])
    compensated = low.detach().float() + low_opt.state[low]["compensation"].float()
    error = (compensated - reference.detach()).abs().max().item()
    ulp = 2.0**-7 * reference.detach().abs().max().item()
    assert error < ulp / 8, f"compensated error {error:.3g} vs one bf16 ulp {ulp:.3g}"


def _variance_after_shrinking_gradients(dtype: torch.dtype) -> torch.Tensor:
    param = torch.nn.Parameter(torch.zeros(2048))
    optimizer = AnyPrecisionAdamW([param], lr=0.0, momentum_dtype=dtype, variance_dtype=dtype, seed=7)
    generator = torch.Generator().manual_seed(11)
    for step in range(1000 + 3000):
        scale = 1.0 if step < 1000 else 0.01
        param.grad = torch.randn(2048, generator=generator) * scale
        optimizer.step()
    return optimizer.state[param]["exp_avg_sq"].float()


def test_bf16_variance_still_decays_with_stochastic_rounding():
    fp32 = _variance_after_shrinking_gradients(torch.float32).mean().item()
    bf16 = _variance_after_shrinking_gradients(torch.bfloat16).mean().item()
    assert abs(bf16 - fp32) <= 0.1 * fp32, f"bf16 variance {bf16:.4g} vs fp32 {fp32:.4g}"


def test_round_to_nearest_bf16_variance_would_freeze():
    """The failure the stochastic rounding exists for: this guards the test above from being vacuous."""
    v = torch.ones(16, dtype=torch.bfloat16)
    for _ in range(3000):
        v = (v.float() * 0.999 + 0.001 * 1e-4).to(torch.bfloat16)
    assert v.float().mean().item() > 0.9


def test_buffer_dtypes_and_kahan_buffer_only_for_low_precision_params():
    fp32_param = torch.nn.Parameter(torch.randn(8))
    bf16_param = torch.nn.Parameter(torch.randn(8).to(torch.bfloat16))
    optimizer = AnyPrecisionAdamW(
        [fp32_param, bf16_param],
        use_kahan_summation=True,
        momentum_dtype="bfloat16",
        variance_dtype=torch.float16,
        compensation_buffer_dtype="bf16",
    )
    fp32_param.grad = torch.randn(8)
    bf16_param.grad = torch.randn(8).to(torch.bfloat16)
    optimizer.step()
    assert optimizer.state[fp32_param]["exp_avg"].dtype == torch.bfloat16
    assert optimizer.state[fp32_param]["exp_avg_sq"].dtype == torch.float16
    assert "compensation" not in optimizer.state[fp32_param]
    assert optimizer.state[bf16_param]["compensation"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"momentum_dtype": "float8"}, "momentum_dtype"),
        ({"variance_dtype": torch.int32}, "variance_dtype"),
        ({"compensation_buffer_dtype": "nope"}, "compensation_buffer_dtype"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_rejects_bad_dtypes_and_seed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnyPrecisionAdamW([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_fp16_params_and_buffers_stay_finite():
    param = torch.nn.Parameter(torch.randn(256).to(torch.float16))
    optimizer = AnyPrecisionAdamW(
        [param],
        lr=1e-2,
        use_kahan_summation=True,
        momentum_dtype="fp16",
        variance_dtype="fp16",
        compensation_buffer_dtype="fp16",
    )
    for (grad,) in gradient_stream([param.shape], 50, seed=2, scale=1e-3):
        feed(optimizer, [param], [grad])
    assert torch.isfinite(param).all()
    assert all(torch.isfinite(t.float()).all() for t in optimizer.state[param].values())


def test_round_to_nearest_option_shows_the_freeze_stochastic_rounding_prevents():
    """stochastic_rounding=False exists for the precision study: the bf16 variance then stops moving."""
    exact = 0.999**1000 * (1 - 0.999**500) + 1e-4 * (1 - 0.999**1000)  # v after 500 g=1 then 1000 g=0.01
    result = {}
    for stochastic in (True, False):
        param = torch.nn.Parameter(torch.zeros(512))
        optimizer = AnyPrecisionAdamW([param], lr=0.0, variance_dtype="bf16", stochastic_rounding=stochastic)
        for step in range(1500):
            param.grad = torch.ones(512) * (1.0 if step < 500 else 0.01)
            optimizer.step()
            if step == 499:
                before_decay = optimizer.state[param]["exp_avg_sq"].clone()
        result[stochastic] = (before_decay, optimizer.state[param]["exp_avg_sq"])
    frozen_start, frozen_end = result[False]
    assert torch.equal(frozen_start, frozen_end), "round-to-nearest: 1000 decay steps change nothing"
    assert result[True][1].float().mean().item() == pytest.approx(exact, rel=0.1)
