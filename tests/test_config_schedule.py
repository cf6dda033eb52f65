"""train.scheduler / train.warmup_epochs: validated in the config, resolved into the run's plan."""

import logging

import pytest

from arvc.config import apply_overrides, load_config
from arvc.train.optimizers import Hyperparameters, plan_schedule


def hp(optimizer="AdaBeliefV2"):
    return Hyperparameters(optimizer=optimizer, lr=1e-3, betas=(0.8, 0.99), eps=1e-9, weight_decay=0.01)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.scheduler": "linear"}, "train.scheduler must be one of auto, cosine"),
        ({"train.warmup_epochs": 0}, "train.warmup_epochs must be at least 1"),
    ],
)
def test_bad_schedule_settings_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(load_config("tiny"), overrides)


def test_schedule_defaults_pair_and_fit_the_run():
    cfg = apply_overrides(load_config("tiny"), {"train.epochs": 40})
    plan = plan_schedule(cfg, hp("AdaBeliefV2"), None)
    assert (plan.name, plan.warmup_epochs, plan.total_epochs) == ("inverse_sqrt", 4, 40)
    assert plan_schedule(cfg, hp("AdaBelief"), None).name == "cosine"
    assert plan_schedule(cfg, hp("AdamW"), None).name == "exponential"
    same = apply_overrides(cfg, {"train.scheduler": "cosine", "train.warmup_epochs": 3})
    assert plan_schedule(same, hp("AdamW"), None).name == "cosine"
    assert plan_schedule(apply_overrides(cfg, {"train.warmup_epochs": 3}), hp(), None).warmup_epochs == 3


def test_a_run_shorter_than_its_warmup_is_warned_about(caplog):
    cfg = apply_overrides(load_config("tiny"), {"train.epochs": 5, "train.warmup_epochs": 8})
    with caplog.at_level(logging.WARNING):
        plan = plan_schedule(cfg, hp("AdaBeliefV2"), None)
    assert "fewer than its 8-epoch warm-up" in caplog.text
    assert max(plan.lr(e) for e in range(5)) < 1e-3
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        plan_schedule(apply_overrides(cfg, {"train.warmup_epochs": None}), hp("AdaBeliefV2"), None)
    assert not caplog.text, "the default warm-up always fits the run"
