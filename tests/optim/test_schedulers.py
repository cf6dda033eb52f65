"""Paired schedulers and the InverseSqrt schedule."""

import math

import pytest
import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, ExponentialLR

from arvc.optim import OPTIMIZERS, InverseSqrt, build_optimizer, build_scheduler
from arvc.optim.schedulers import Schedule, default_warmup_epochs, paired_schedule


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
        ("AdamWScheduleFree", ConstantLR),  # schedule-free: the lr stays as given
        ("RAdamScheduleFree", ConstantLR),
    ],
)
def test_auto_pairs_each_optimizer(name, expected):
    scheduler = build_scheduler(optimizer_for(name), "auto", total_epochs=50)
    assert type(scheduler) is expected


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_one_pairing_rule_for_a_name_and_for_a_built_optimizer(name):
    """The schedule "auto" means is decided by one function, asked with a registry name (the trainer, compare)
    or with the optimizer built (build_scheduler); 8-bit always gets RVC's exponential decay."""
    expected = OPTIMIZERS[name].paired_scheduler or "exponential"
    assert paired_schedule(name) == paired_schedule(optimizer_for(name)) == expected
    assert paired_schedule(name, use_8bit=True) == "exponential"


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


@pytest.mark.parametrize("name", [n for n, spec in OPTIMIZERS.items() if spec.schedule_free])
def test_another_schedule_for_a_schedule_free_optimizer_warns(name, recwarn):
    """As the trainer warns for train.scheduler (tests/train/test_weights.py): a schedule on top of a
    schedule-free optimizer defeats its point. Its own pairing, by name or by "auto", says nothing."""
    for quiet in ("auto", "constant"):
        assert type(build_scheduler(optimizer_for(name), quiet, total_epochs=5)) is ConstantLR
    assert not recwarn.list
    with pytest.warns(UserWarning, match=f"scheduler cosine with the schedule-free {name}: it needs no"):
        assert type(build_scheduler(optimizer_for(name), "cosine", total_epochs=5)) is CosineAnnealingLR
    for other in ("AdamW", "AdaBelief"):  # (what is not schedule-free takes any schedule without a word)
        build_scheduler(optimizer_for(other), "inverse_sqrt", total_epochs=5)
    assert not recwarn.list


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


# --- the pure functions a run uses (Schedule / scheduled_lr) ---------------------------------------------
@pytest.mark.parametrize(
    "name, scheduler",
    [
        ("cosine", lambda o: CosineAnnealingLR(o, T_max=12, eta_min=1e-6)),
        ("exponential", lambda o: ExponentialLR(o, gamma=0.999875)),
        ("inverse_sqrt", lambda o: InverseSqrt(o, warmup=4)),
        ("constant", lambda o: ConstantLR(o, factor=1.0, total_iters=0)),
    ],
)
def test_pure_schedule_matches_torch_scheduler(name, scheduler):
    """torch's schedulers accumulate the lr step by step; the pure function computes it. rel 1e-12 allows
    for that float32-free, float64 summation-order difference over 12 epochs."""
    torch_lrs = lrs(scheduler(optimizer_for("AdamW", lr=1e-3)), 12)
    plan = Schedule(name, 1e-3, total_epochs=12, warmup_epochs=4)
    assert [plan.lr(e) for e in range(12)] == pytest.approx(torch_lrs, rel=1e-12)


def test_replanned_cosine_continues_from_the_lr_reached_and_never_rises():
    plan = Schedule("cosine", 1e-3, total_epochs=3, warmup_epochs=1)
    longer = plan.replanned(6, last_epoch=2)
    assert longer.lr(2) == pytest.approx(plan.lr(2), rel=1e-12)
    seq = [longer.lr(e) for e in range(2, 7)]
    assert all(b < a for a, b in zip(seq, seq[1:], strict=False)) and seq[-1] == pytest.approx(1e-6)
    assert longer.lr(10) == pytest.approx(1e-6), "past its end the cosine stays at eta_min"
    # Shorter runs decay faster, still from where the run is; other schedules do not depend on the length.
    shorter = Schedule("cosine", 1e-3, total_epochs=10, warmup_epochs=1).replanned(5, last_epoch=3)
    assert shorter.lr(4) < shorter.lr(3)
    exponential = Schedule("exponential", 1e-3, total_epochs=3, warmup_epochs=1)
    assert [exponential.replanned(9, 2).lr(e) for e in range(9)] == [exponential.lr(e) for e in range(9)]


def test_schedule_scales_with_a_new_base_lr_and_round_trips():
    plan = Schedule("cosine", 1e-3, total_epochs=4, warmup_epochs=1, eta_min=0.0).replanned(8, last_epoch=1)
    lower = plan.with_base_lr(1e-4)  # (eta_min is absolute; 0 here so that the whole curve scales)
    assert [lower.lr(e) for e in range(1, 8)] == pytest.approx(
        [plan.lr(e) / 10 for e in range(1, 8)], rel=1e-12
    )
    assert Schedule.from_dict(lower.to_dict()) == lower


def test_default_warmup_fits_the_run_length():
    assert [default_warmup_epochs(n) for n in (1, 5, 19, 20, 99, 100, 1000)] == [1, 1, 1, 2, 9, 10, 10]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "auto"}, "Unknown schedule"),
        ({"total_epochs": 0}, "total_epochs"),
        ({"warmup_epochs": 0}, "warmup_epochs"),
        ({"name": "exponential", "gamma": 1.5}, "gamma"),
    ],
)
def test_schedule_rejects_bad_values(kwargs, message):
    values = {"name": "cosine", "base_lr": 1e-3, "total_epochs": 5, "warmup_epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        Schedule(**values)


@pytest.mark.parametrize("epochs", [5, 30, 300])
def test_build_scheduler_warms_up_as_a_run_of_that_length_does(epochs):
    # build_scheduler and scheduled_lr warmed up over a fixed 10 epochs whatever the run's length, while a
    # run (the Schedule the trainer builds) takes clamp(epochs // 10, 1, 10): a 30-epoch run 3.
    scheduler = build_scheduler(optimizer_for("AdaBeliefV2"), "auto", total_epochs=epochs)
    assert scheduler.warmup == default_warmup_epochs(epochs)
    run = Schedule("inverse_sqrt", 1e-3, epochs, default_warmup_epochs(epochs))
    assert lrs(scheduler, epochs) == pytest.approx([run.lr(e) for e in range(epochs)], rel=1e-12)
