"""`arvc train --resume`: settings that cannot continue the run are refused before any work."""

import shutil

import pytest
from typer.testing import CliRunner

from arvc.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from arvc.data.demo import generate_demo_voice

    root = tmp_path_factory.mktemp("resume")
    generate_demo_voice(root / "wav", seconds=12, sr=16000, seed=2)
    args = ["train", str(root / "wav"), "--runs-dir", str(root / "runs"), "--name", "alice"]
    result = runner.invoke(app, [*args, "--batch-size", "2", "--epochs", "1", "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "alice"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "model.hidden_channels=96"], "model.hidden_channels: 64 -> 96"),
        (["--batch-size", "4"], "train.batch_size: 2 -> 4"),
        (["--seed", "7"], "train.seed: 1234 -> 7"),
        (["--set", "data.sampling_rate=32000"], "data.sampling_rate: 16000 -> 32000"),
        (["--select", "mcd_db"], "train.select: 'mel_l1' -> 'mcd_db'"),  # its best was chosen by mel L1
    ],
)
def test_resume_refuses_changes_that_cannot_continue_the_run(trained_run, tmp_path, args, message):
    run = tmp_path / "alice"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("data"))  # would be preprocessed again
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", *args])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert output.startswith("error: cannot resume") and message in output and "--name" in output
    assert result.exception is None or isinstance(result.exception, SystemExit), "no traceback"
    assert not (run / "data").exists(), "refused before preprocessing"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_best_json_follows_its_checkpoint_when_a_resume_abandons_it(tmp_path):
    """export/best/best.json named a checkpoint that a resume from an older one had moved to
    checkpoints/abandoned/: it now says where that checkpoint is (and why). A second resume from the same
    checkpoint moved the first continuation's checkpoints into the same folder, over the first run's of the
    same names: best.json then named other weights, and the first continuation's were lost."""
    import json

    from arvc.data.demo import generate_demo_voice

    generate_demo_voice(tmp_path / "wav", seconds=30, sr=16000, seed=2)  # several steps an epoch
    run = tmp_path / "runs" / "wav"
    args = ["train", str(tmp_path / "wav"), "--runs-dir", str(tmp_path / "runs"), "--batch-size", "2"]
    first = runner.invoke(app, [*args, "--epochs", "2", "--save-every", "1"])
    assert first.exit_code == 0, first.output
    epoch_1, epoch_2 = sorted((run / "checkpoints").glob("ckpt_*.pt"))
    record = json.loads((run / "export" / "best" / "best.json").read_text())
    if record["checkpoint"] != epoch_2.name:  # as when epoch 2 validated best
        record["checkpoint"] = epoch_2.name
        (run / "export" / "best" / "best.json").write_text(json.dumps(record))

    original = epoch_2.stat().st_ino  # a move keeps the file (its inode); an overwrite replaces it

    # A continuation to the end of epoch 2 writes a checkpoint of the same name as the one it replaces.
    resumed = runner.invoke(app, ["train", "--resume", str(epoch_1), "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert (run / "checkpoints" / epoch_2.name).is_file()
    record = json.loads((run / "export" / "best" / "best.json").read_text())
    if record["checkpoint"] != epoch_2.name:  # the continuation's epoch 2 did not validate better
        first_stamp = record["checkpoint"].split("/")[1]
        assert record["checkpoint"] == f"abandoned/{first_stamp}/{epoch_2.name}", record
        assert epoch_1.name in record["note"]
    best = run / "checkpoints" / record["checkpoint"]
    assert best.is_file()
    best_file = best.stat().st_ino

    # Back to epoch 1 again: the first continuation's checkpoints go aside too, beside (not over) the
    # checkpoints the first resume moved there; best.json still names the weights it named.
    step_1 = int(epoch_1.stem.split("_S")[1])
    again = runner.invoke(app, ["train", "--resume", str(epoch_1), "--max-steps", str(step_1 + 1)])
    assert again.exit_code == 0, again.output
    moved = sorted((run / "checkpoints" / "abandoned").rglob(epoch_2.name))
    assert len(moved) == 2 and len({p.parent for p in moved}) == 2, moved
    assert original in {p.stat().st_ino for p in moved}, "the first run's epoch 2 was overwritten"
    record = json.loads((run / "export" / "best" / "best.json").read_text())
    assert record["checkpoint"].startswith("abandoned/") and record["checkpoint"].endswith(epoch_2.name)
    assert (run / "checkpoints" / record["checkpoint"]).stat().st_ino == best_file, record
    assert epoch_1.name in record["note"]
