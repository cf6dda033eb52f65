"""arvc.train.request: what the CLI and the web UI both call to check a run before any work."""

import pytest

from arvc.train.request import TrainRequest, plan_training


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_steps", 0, "--max-steps 0"),
        ("epochs", -3, "--epochs -3"),
        ("save_every", 1.5, "--save-every 1.5"),
        ("batch_size", "many", "--batch-size 'many'"),
        ("lr", -1.0, "--lr"),
        ("precision", "fp8", "unknown precision"),
        ("optimizer", "Adam", "Adam"),
    ],
)
def test_a_bad_value_is_refused_before_anything_is_written(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        plan_training(TrainRequest(runs_dir=tmp_path / "runs", **{field: value}))
    assert not (tmp_path / "runs").exists()


def test_a_good_request_plans_the_demo_run_without_writing(tmp_path):
    plan = plan_training(TrainRequest(runs_dir=tmp_path / "runs", batch_size="4", max_steps=5))
    assert plan.run_dir == tmp_path / "runs" / "demo" and plan.cfg.train.batch_size == 4
    assert plan.cfg.train.epochs == 60 and plan.options.max_steps == 5  # the demo's epochs
    assert not (tmp_path / "runs").exists()
