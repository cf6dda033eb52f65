"""fp16: a step GradScaler skips for overflow is reported as skipped (StepResult, log, metrics.csv)."""

import csv
import logging

import pytest
import torch

from arvc.config import apply_overrides, load_config
from arvc.train.checkpoint import load_checkpoint
from arvc.train.loop import TrainOptions, train


@pytest.mark.slow  # fp16 autocast on CPU is very slow here (minutes for one tiny step on the 2-core box)
@pytest.mark.parametrize("batch, accumulate", [(8, 1), (4, 2)])
def test_overflowing_fp16_steps_are_counted_as_skipped(
    tmp_path, data_dir, monkeypatch, caplog, batch, accumulate
):
    """With accumulation too: the loss scale is checked and updated once per optimizer step."""
    real = torch.amp.GradScaler

    def huge_scale(device, enabled=True, **kwargs):  # every fp16 gradient overflows at 2**60
        return real(device, init_scale=2.0**60, enabled=enabled)

    monkeypatch.setattr(torch.amp, "GradScaler", huge_scale)
    cfg = apply_overrides(
        load_config("tiny"),
        {"train.batch_size": batch, "train.accumulate": accumulate, "train.log_interval": 1},
    )
    with caplog.at_level(logging.WARNING):
        result = train(
            TrainOptions(
                run_dir=tmp_path / "run", data_dir=data_dir, config=cfg, precision="fp16", max_steps=1
            )
        )
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        skipped = [row["skipped"] for row in csv.DictReader(handle)]
    assert skipped == ["discriminator+generator"]
    assert "fp16 loss scale now" in caplog.text and "update skipped" in caplog.text
    checkpoint = load_checkpoint(result.last_checkpoint)
    assert checkpoint["scaler"]["scale"] == pytest.approx(2.0**59), "the overflow halved the scale"
    assert not checkpoint["optim_g"]["state"]["state"] and not checkpoint["optim_d"]["state"]["state"], (
        "no optimizer step was taken"
    )
