"""The guide's recommendation rules and their edges."""

import pytest

from arvc.optim import OPTIMIZERS
from arvc.optim.recommend import recommend


@pytest.mark.parametrize(
    "epochs, precision, optimizer",
    [
        (1, "fp32", "RAdam"),
        (200, "bf16", "RAdam"),
        (201, "fp32", "AdamW"),
        (499, "bf16", "AdamW"),
        (500, "bf16", "AnyPrecisionAdamW"),
        (5000, "fp16", "AdamW"),
        (300, "fp32", "AdamW"),
    ],
)
def test_rules(epochs, precision, optimizer):
    advice = recommend(epochs, precision)
    assert advice.optimizer == optimizer
    assert advice.optimizer in OPTIMIZERS
    assert (advice.lr, advice.batch_size, advice.epochs) == (1e-3, 8, epochs)
    assert advice.reason


def test_long_bf16_runs_get_kahan():
    assert recommend(800, "bf16").options["use_kahan_summation"] is True


@pytest.mark.parametrize("epochs, precision", [(0, "fp32"), (10, "int8"), (2.5, "fp32")])
def test_bad_input(epochs, precision):
    with pytest.raises(ValueError):
        recommend(epochs, precision)


def test_early_stopping_gets_a_schedule_free_optimizer_when_the_registry_has_one(monkeypatch):
    """No fixed run length (stopping on held-out validation): a schedule-free optimizer, whose averaged
    weights are good whenever training stops (issue #33); without one in the registry, the usual rules."""
    from arvc.optim import registry

    advice = recommend(300, "fp32", early_stop=True)
    assert registry.get_spec(advice.optimizer).schedule_free
    assert advice.early_stop and "needs no schedule" in advice.reason
    # and what the 3-seed comparison measured, which the choice weighs against AdamW
    assert "tied AdamW when stopped at a third of the run" in advice.reason
    assert "docs/compare.md" in advice.reason
    assert recommend(300, "fp32").optimizer == "AdamW", "a fixed run length: the guide's default"
    plain = {k: s for k, s in registry.OPTIMIZERS.items() if not s.schedule_free}
    monkeypatch.setattr(registry, "OPTIMIZERS", plain)
    assert recommend(300, "fp32", early_stop=True).optimizer == "AdamW"
