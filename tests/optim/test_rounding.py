"""Shared optimizer math: stochastic rounding, seeds, dtype parsing."""

import pytest
import torch

from arvc.optim._checks import parse_dtype
from arvc.optim._rounding import rounding_seed, stochastic_round_


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_is_unbiased_and_lands_on_neighbours(dtype):
    value = torch.full((200_000,), 1.0 + 0.3 * (2.0**-7 if dtype == torch.bfloat16 else 2.0**-10))
    out = torch.empty_like(value, dtype=dtype)
    stochastic_round_(out, value, seed=1)
    down = value.to(dtype).float()  # nearest is the lower neighbour here (0.3 of an ulp above)
    up = torch.nextafter(value.to(dtype), torch.tensor(2.0, dtype=dtype)).float()
    assert set(out.float().unique().tolist()) == {down[0].item(), up[0].item()}
    fraction_up = (out.float() == up).float().mean().item()
    assert fraction_up == pytest.approx(0.3, abs=0.01)
    assert out.float().mean().item() == pytest.approx(value[0].item(), rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_keeps_representable_and_special_values(dtype):
    exact = torch.tensor([0.0, 1.0, -2.0, 0.5, float("inf"), float("-inf")])
    out = torch.empty_like(exact, dtype=dtype)
    stochastic_round_(out, exact, seed=5)
    assert torch.equal(out.float(), exact)
    nan = torch.empty(1, dtype=dtype)
    stochastic_round_(nan, torch.tensor([float("nan")]), seed=5)
    assert torch.isnan(nan).all()


def test_bf16_rounding_never_overflows_the_largest_finite_value():
    largest = torch.finfo(torch.bfloat16).max
    out = torch.empty(10_000, dtype=torch.bfloat16)
    stochastic_round_(out, torch.full((10_000,), largest), seed=0)
    assert torch.isfinite(out).all()


def test_stochastic_rounding_is_reproducible_and_seed_dependent():
    values = torch.randn(4096)
    a, b, c = (torch.empty(4096, dtype=torch.bfloat16) for _ in range(3))
    stochastic_round_(a, values, seed=rounding_seed(0, 1, 2, 0))
    torch.rand(100)  # global RNG use in between must not matter
    stochastic_round_(b, values, seed=rounding_seed(0, 1, 2, 0))
    stochastic_round_(c, values, seed=rounding_seed(0, 1, 3, 0))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_rounding_seed_separates_each_argument():
    seeds = {
        rounding_seed(s, i, t, b) for s in range(3) for i in range(3) for t in range(3) for b in range(2)
    }
    assert len(seeds) == 3 * 3 * 3 * 2
    assert all(0 <= s < 2**63 for s in seeds)


def test_full_precision_destination_is_a_plain_copy():
    out = torch.empty(3)
    stochastic_round_(out, torch.tensor([1.1, 2.2, 3.3]), seed=0)
    assert torch.equal(out, torch.tensor([1.1, 2.2, 3.3]))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("bf16", torch.bfloat16),
        ("torch.float16", torch.float16),
        ("FLOAT32", torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_parse_dtype_accepts_names_and_dtypes(value, expected):
    assert parse_dtype(value, "x") is expected


@pytest.mark.parametrize("value", ["int8", torch.int64, 3, "float8"])
def test_parse_dtype_rejects_non_float(value):
    with pytest.raises(ValueError, match="x"):
        parse_dtype(value, "x")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lane", [0, 1])
def test_rounding_bits_are_unbiased_at_every_fraction_and_independent_across_steps(dtype, lane):
    """The hash behind the rounding: at any fractional position between two neighbours, across many
    elements and many steps (a new seed each), rounding up happens with exactly that probability; and
    the two lanes of one hash (the two moments) make independent decisions."""
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    fractions = torch.linspace(0.05, 0.95, 19).repeat_interleave(2000)
    value = 1.0 + fractions * ulp
    ups = []
    for step in range(20):
        out = torch.empty_like(value, dtype=dtype)
        stochastic_round_(out, value, seed=rounding_seed(7, 3, step, 0), lane=lane)
        ups.append((out.float() > 1.0).float())
    fraction_up = torch.stack(ups).view(20, 19, 2000).mean(dim=(0, 2))
    # 40,000 draws per fraction: 4 standard deviations is < 0.01.
    assert torch.allclose(fraction_up, torch.linspace(0.05, 0.95, 19), atol=0.01)
    other = torch.empty_like(value, dtype=dtype)
    stochastic_round_(other, value, seed=rounding_seed(7, 3, 19, 0), lane=1 - lane)
    agree = ((other.float() > 1.0).float() == ups[-1]).float().mean().item()
    expected = (fractions**2 + (1 - fractions) ** 2).mean().item()  # if the lanes are independent
    assert agree == pytest.approx(expected, abs=0.01)


def test_rounding_seeds_equals_rounding_seed_for_every_pair():
    """The vectorised hash the fused GPU path uses for hundreds of tensors per step is the per-tensor one."""
    import random

    from arvc.optim._rounding import rounding_seed, rounding_seeds

    generator = random.Random(1)
    for seed in (0, -3, 77, 2**63 + 5, -(2**63), 2**64 - 1, 12345678901234):
        indices = [generator.randrange(10**6) for _ in range(50)] + [0, 2**40, -1]
        steps = [generator.randrange(1, 10**7) for _ in indices]
        got = rounding_seeds(seed, indices, steps, 0).tolist()
        assert got == [rounding_seed(seed, i, s, 0) for i, s in zip(indices, steps, strict=True)]
