"""Paired schedulers and the InverseSqrt schedule."""

import math

import pytest
import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, ExponentialLR

from arvc.optim import InverseSqrt, build_optimizer, build_scheduler


def optimizer_for(name, lr=1e-3):
    return build_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], lr=lr)


def lrs(scheduler, epochs):
    seen = []
    for _ in range(epochs):
        seen.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize(
    "name, expected",
    [
        ("AdamW", ExponentialLR),
        ("RAdam", ExponentialLR),
        ("AnyPrecisionAdamW", ExponentialLR),
        ("AdaBelief", CosineAnnealingLR),
        ("AdaBeliefV2", InverseSqrt),
    ],
)
def test_auto_pairs_each_optimizer(name, expected):
    scheduler = build_scheduler(optimizer_for(name), "auto", total_epochs=50)
    assert type(scheduler) is expected


def test_auto_parameters_follow_rvc_and_the_guide():
    exponential = build_scheduler(optimizer_for("AdamW"), total_epochs=50)
    assert exponential.gamma == 0.999875
    cosine = build_scheduler(optimizer_for("AdaBelief"), total_epochs=50)
    assert (cosine.T_max, cosine.eta_min) == (50, 1e-6)
    assert lrs(cosine, 51)[-1] == pytest.approx(1e-6)


def test_explicit_name_overrides_the_pairing():
    assert type(build_scheduler(optimizer_for("AdaBelief"), "constant", total_epochs=5)) is ConstantLR
    assert type(build_scheduler(optimizer_for("AdamW"), "inverse-sqrt", total_epochs=5)) is InverseSqrt
    constant = build_scheduler(optimizer_for("AdamW", lr=0.5), "constant", total_epochs=5)
    assert lrs(constant, 4) == [0.5] * 4


def test_eight_bit_optimizer_gets_the_default_exponential():
    pytest.importorskip("bitsandbytes")
    optimizer = build_optimizer("AdaBelief", [torch.nn.Parameter(torch.zeros(4096))], lr=1e-3, use_8bit=True)
    assert type(build_scheduler(optimizer, total_epochs=5)) is ExponentialLR


def test_inverse_sqrt_factor_from_the_first_step():
    optimizer = optimizer_for("AdamW", lr=1.0)
    seen = lrs(InverseSqrt(optimizer, warmup=4), 16)
    expected = [min(t / 4, math.sqrt(4 / t)) for t in range(1, 17)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[0] == 0.25 and seen[3] == 1.0


def test_inverse_sqrt_state_dict_round_trip():
    first = InverseSqrt(optimizer_for("AdamW", lr=1.0), warmup=3)
    lrs(first, 7)
    state = first.state_dict()
    assert state["warmup"] == 3
    second_optimizer = optimizer_for("AdamW", lr=1.0)
    second = InverseSqrt(second_optimizer, warmup=10)
    second.load_state_dict(state)
    # The lr is carried by the optimizer; after the scheduler state is restored the schedule continues.
    assert second.warmup == 3 and second.last_epoch == first.last_epoch
    assert lrs(second, 5) == pytest.approx(lrs(first, 5))


@pytest.mark.parametrize("warmup", [0, -1, 2.5, True])
def test_inverse_sqrt_rejects_bad_warmup(warmup):
    with pytest.raises(ValueError, match="warmup"):
        InverseSqrt(optimizer_for("AdamW"), warmup=warmup)


def test_unknown_scheduler_and_bad_epochs():
    with pytest.raises(ValueError, match="inverse_sqrt"):
        build_scheduler(optimizer_for("AdamW"), "linear", total_epochs=5)
    with pytest.raises(ValueError, match="total_epochs"):
        build_scheduler(optimizer_for("AdamW"), total_epochs=0)
