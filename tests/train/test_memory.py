"""Memory before training: what is counted, the batch `--batch-size auto` picks, the warnings and errors."""

import logging

import pytest
import torch
from trainkit import options, tiny
from typer.testing import CliRunner

from arvc.cli import app
from arvc.train import loop
from arvc.train.checkpoint import load_checkpoint
from arvc.train.loop import TrainError, train
from arvc.train.memory import HEADROOM, _saved_bytes, auto_batch_size


def test_saved_bytes_count_what_backward_keeps_once_and_not_the_weights():
    linear = torch.nn.Linear(256, 64)
    x = torch.randn(32, 256, requires_grad=True)
    weights = {p.untyped_storage().data_ptr() for p in linear.parameters()}
    # linear saves its input (32x256 floats) and the weight (excluded); tanh saves its output (32x64)
    counted = _saved_bytes(lambda: torch.tanh(linear(x)).sum(), weights)
    assert counted == (32 * 256 + 32 * 64) * 4
    assert _saved_bytes(lambda: (x * x).sum(), set()) == 32 * 256 * 4, "x saved twice is one storage"


@pytest.mark.parametrize(
    "fixed, per_item, free, limit, batch",
    [
        (100, 10, 1000, 100, 70),  # 0.8 * 1000 - 100 = 700 bytes of room: 70 items
        (100, 10, 1000, 16, 16),  # capped (the training pieces, or 64)
        (100, 10, 130, 64, 0),  # 0.8 * 130 - 100 = 4 < 10: not even one
        (0, 10, 10, 64, 0),
    ],
)
def test_auto_batch_is_the_largest_that_fits_with_headroom(fixed, per_item, free, limit, batch):
    assert HEADROOM == 0.8
    assert auto_batch_size(fixed, per_item, free, limit) == batch


def test_the_estimate_is_logged_and_auto_picks_and_records_a_batch(tmp_path, data_dir, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="arvc")
    cfg = tiny(epochs=1, val_fraction=0.0)
    result = train(options(tmp_path, data_dir, config=cfg, max_steps=1, auto_batch_size=True))
    assert "memory per step: about" in caplog.text and "available RAM" in caplog.text
    chosen = load_checkpoint(result.last_checkpoint)["config"]["train"]["batch_size"]
    pieces = sum(1 for _ in (data_dir / "filelist.txt").open())
    assert chosen == min(64, pieces), "plenty of RAM: every training piece in one batch"
    assert f"batch size {chosen} (auto" in caplog.text

    caplog.clear()  # a resumed run keeps its batch, whatever fits now
    monkeypatch.setattr(loop, "free_memory", lambda device: (1 << 20, "available RAM"))
    resumed = train(options(tmp_path, data_dir, config=tiny(epochs=2, val_fraction=0.0, batch_size=chosen),
                            resume=tmp_path / "run", max_steps=2, auto_batch_size=True))  # fmt: skip
    assert load_checkpoint(resumed.last_checkpoint)["config"]["train"]["batch_size"] == chosen
    assert "keeps its batch size" in caplog.text
    assert "likely does not fit" in caplog.text, "1 MiB free: the run's batch is warned about"


def test_auto_batch_that_cannot_fit_one_item_fails_before_anything_is_written(
    tmp_path, data_dir, monkeypatch
):
    monkeypatch.setattr(loop, "free_memory", lambda device: (1 << 20, "available RAM"))
    with pytest.raises(TrainError, match="not even batch 1 fits: a step needs about"):
        train(options(tmp_path, data_dir, auto_batch_size=True))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_batch_size_takes_a_number_or_auto(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["train", "--runs-dir", str(tmp_path), "--batch-size", "many"])
    assert bad.exit_code == 1 and "--batch-size 'many': use a whole number >= 1, or auto" in bad.output
    several = runner.invoke(
        app, ["train", "--runs-dir", str(tmp_path), "--batch-size", "auto", "--nproc", "2"]
    )
    assert several.exit_code == 1 and "--batch-size auto fits one process" in several.output
    assert not list(tmp_path.iterdir())
