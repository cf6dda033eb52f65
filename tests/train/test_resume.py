"""Resume: the checkpoint is the truth. Schedules re-planned explicitly, --lr allowed, other changes refused,
pruning never deletes what the run just wrote."""

import csv
import logging
import math
from functools import partial

import pytest
import trainkit

from arvc.optim.schedulers import COSINE_ETA_MIN, RVC_LR_DECAY
from arvc.train.checkpoint import (
    CheckpointError,
    atomic_save,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from arvc.train.loop import train

# 11 pieces of demo voice: batch 8 gives one step per epoch, the fastest way to many epochs.
tiny = partial(trainkit.tiny, batch_size=8)
options = partial(trainkit.options, batch_size=8)


def epoch_lrs(run_dir) -> dict[int, float]:
    """The lr each epoch trained with, from metrics.csv (what the user sees)."""
    with (run_dir / "metrics.csv").open() as handle:
        return {int(row["epoch"]): float(row["lr_g"]) for row in csv.DictReader(handle)}


def cosine(e, start, lr_start, total):
    return (
        COSINE_ETA_MIN
        + (lr_start - COSINE_ETA_MIN) * (1 + math.cos(math.pi * (e - start) / (total - start))) / 2
    )


def test_extending_a_cosine_run_replans_it_and_never_raises_the_lr(tmp_path, data_dir, caplog):
    train(options(tmp_path, data_dir, optimizer="AdaBelief", config=tiny(epochs=3)))
    with caplog.at_level(logging.INFO, logger="arvc"):
        train(options(tmp_path, data_dir, config=tiny(epochs=6), resume=tmp_path / "run"))
    lr = epoch_lrs(tmp_path / "run")
    first = [cosine(e, 0, 1e-3, 3) for e in range(3)]  # 1e-3, 7.5e-4, 2.5e-4 (+ eta_min terms)
    assert [lr[e] for e in (1, 2, 3)] == pytest.approx(first, rel=1e-12)
    # Decided: from the lr reached in the last trained epoch (index 2), down to eta_min at the new end.
    rest = [cosine(e, 2, first[2], 6) for e in range(3, 6)]
    assert [lr[e] for e in (4, 5, 6)] == pytest.approx(rest, rel=1e-12)
    sequence = [lr[e] for e in range(3, 7)]
    assert all(b < a for a, b in zip(sequence, sequence[1:], strict=False)), sequence
    assert "cosine now ends at epoch 6" in caplog.text
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["schedule"]["total_epochs"] == 6


def test_resume_with_lr_uses_it_and_records_it(tmp_path, data_dir, caplog):
    train(options(tmp_path, data_dir, config=tiny(epochs=1)))
    with caplog.at_level(logging.INFO, logger="arvc"):
        result = train(options(tmp_path, data_dir, config=tiny(epochs=2), lr=3e-4, resume=tmp_path / "run"))
    assert "--lr 0.0003" in caplog.text
    lr = epoch_lrs(tmp_path / "run")
    assert lr[1] == 1e-3
    assert lr[2] == pytest.approx(3e-4 * RVC_LR_DECAY, rel=1e-12)  # the schedule scales from the new lr
    checkpoint = load_checkpoint(result.last_checkpoint)
    assert checkpoint["optim_g"]["hyperparameters"]["lr"] == 3e-4
    assert checkpoint["optim_d"]["hyperparameters"]["lr"] == 3e-4
    assert checkpoint["schedule"]["base_lr"] == 3e-4


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_size": 4}, "train.batch_size: 8 -> 4"),
        ({"seed": 7}, "train.seed: 1234 -> 7"),
        ({"scheduler": "constant"}, "train.scheduler: 'auto' -> 'constant'"),
    ],
)
def test_resume_refuses_settings_that_cannot_continue(tmp_path, data_dir, change, message):
    train(options(tmp_path, data_dir, config=tiny(epochs=1)))
    before = list_checkpoints(tmp_path / "run")
    with pytest.raises(CheckpointError, match="cannot resume") as error:
        train(options(tmp_path, data_dir, config=tiny(epochs=2, **change), resume=tmp_path / "run"))
    assert message in str(error.value) and "--name" in str(error.value)
    assert list_checkpoints(tmp_path / "run") == before


def test_resume_of_an_old_checkpoint_without_a_schedule_record(tmp_path, data_dir):
    """Checkpoints written before plans were recorded hold torch scheduler states; they still resume and
    the epoch defines the lr (the plan that run followed: here cosine over its 2 epochs, extended to 3)."""
    train(options(tmp_path, data_dir, optimizer="AdaBelief", config=tiny(epochs=2)))
    path = latest_checkpoint(tmp_path / "run")
    old = load_checkpoint(path)
    del old["schedule"]
    for key in ("optim_g", "optim_d"):
        old[key]["scheduler"] = {"T_max": 2, "eta_min": 1e-6, "last_epoch": 2, "_last_lr": [1e-6]}
    atomic_save(old, path)
    train(options(tmp_path, data_dir, config=tiny(epochs=3), resume=tmp_path / "run"))
    lr = epoch_lrs(tmp_path / "run")
    assert lr[3] == pytest.approx(cosine(2, 1, cosine(1, 0, 1e-3, 2), 3), rel=1e-12)
    assert lr[3] < lr[2]


def test_pruning_keeps_what_a_resume_from_an_older_checkpoint_writes(tmp_path, data_dir):
    config = tiny(epochs=3, batch_size=4, keep_last=3)  # two steps per epoch
    train(options(tmp_path, data_dir, config=config))
    e1, e2, e3 = list_checkpoints(tmp_path / "run")
    # Back to epoch 1, stop mid-epoch 2: the new checkpoint sorts before e2 and e3 by its name.
    again = tiny(epochs=3, batch_size=4, keep_last=2)
    result = train(options(tmp_path, data_dir, config=again, resume=e1, max_steps=3))
    written = result.last_checkpoint
    assert written.name == "ckpt_E00001_S00000003.pt"
    assert written.is_file(), "the checkpoint the resumed run just wrote was deleted"
    assert latest_checkpoint(tmp_path / "run") == written, "--resume RUN must continue from it"
    assert list_checkpoints(tmp_path / "run") == [e1, written]
    abandoned = tmp_path / "run" / "checkpoints" / "abandoned"
    (folder,) = abandoned.iterdir()  # this resume's own folder, abandoned/<UTC time>/
    assert sorted(p.name for p in folder.iterdir()) == [e2.name, e3.name], "moved aside, not deleted"


def test_the_config_chooses_the_schedule_and_its_warmup(tmp_path, data_dir):
    config = tiny(epochs=3, scheduler="inverse_sqrt", warmup_epochs=2)
    train(options(tmp_path, data_dir, optimizer="AdamW", config=config))
    lr = epoch_lrs(tmp_path / "run")
    assert [lr[e] for e in (1, 2, 3)] == pytest.approx([5e-4, 1e-3, 1e-3 * math.sqrt(2 / 3)], rel=1e-12)


def test_resuming_a_renamed_checkpoint_moves_aside_only_what_comes_after_it(tmp_path):
    # A copy of the newest checkpoint saved as keep.pt moved every checkpoint of the run to abandoned/
    # (its name has no position, which sorted before all of them), and the log listed them as "later".
    from arvc.train.checkpoint import abandon_later_checkpoints, checkpoint_path, list_checkpoints

    names = [checkpoint_path(tmp_path, epoch, step) for epoch, step in ((3, 7), (4, 9), (5, 11))]
    for path in names:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"ckpt")
    renamed = tmp_path / "checkpoints" / "keep.pt"
    renamed.write_bytes(b"ckpt")
    assert abandon_later_checkpoints(tmp_path, renamed) == []  # where it stands is not in its name
    assert abandon_later_checkpoints(tmp_path, renamed, position=(5, 11)) == []
    assert list_checkpoints(tmp_path) == names
    assert abandon_later_checkpoints(tmp_path, renamed, position=(4, 9)) == [names[2]]
    assert list_checkpoints(tmp_path) == names[:2]
    (moved,) = (tmp_path / "checkpoints" / "abandoned").glob(f"*/{names[2].name}")
    assert moved.read_bytes() == b"ckpt"
