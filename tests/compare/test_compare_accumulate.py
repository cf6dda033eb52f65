"""A comparison's up-front checks count the items of an optimizer step (train.accumulate micro-batches of
train.batch_size), as training does."""

import logging

import pytest

from arvc.compare import run_compare, runner
from arvc.data.preprocess import DataError


def test_a_step_larger_than_the_training_pieces_is_refused_before_any_contestant(three_recordings, tmp_path):
    """6 training pieces, batch 4 x accumulate 2 = 8 per step: every contestant failed the same way, one
    after another (the check compared the pieces with the batch of 4)."""
    out = tmp_path / "c"
    overrides = {"train.batch_size": 4, "train.accumulate": 2}
    with pytest.raises(DataError, match=r"batch size 4 x accumulate 2 = 8 items per step .* pieces \(6;"):
        run_compare(three_recordings, out, ["AdamW"], epochs=1, seeds=1, overrides=overrides)
    assert not (out / "runs").exists(), "no contestant started"


def test_the_short_run_warning_counts_optimizer_steps(three_recordings, tmp_path, monkeypatch, caplog):
    """6 training pieces, batch 2 x accumulate 2: 1 step an epoch (it said 3)."""
    monkeypatch.setattr(runner, "_run_one", lambda variant, run_dir, cfg, contest: (None, "SIGINT"))
    caplog.set_level(logging.WARNING, logger="arvc")
    overrides = {"train.batch_size": 2, "train.accumulate": 2}
    run_compare(three_recordings, tmp_path / "c", ["AdamW"], epochs=2, seeds=1, overrides=overrides)
    assert "runs of 2 steps, fewer than" in caplog.text, caplog.text
