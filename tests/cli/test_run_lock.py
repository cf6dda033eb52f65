"""One process trains a run at a time: RUN/.arvc-run.lock holds its PID while it does.

Two `arvc train --resume runs/s1` at once both "succeeded" (validation.csv got duplicate rows, the
checkpoints interleaved), and the web UI offered to resume a run the CLI was still training.
"""

import json
import shutil
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from arvc.cli import app
from arvc.train.runlock import RUN_LOCK

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("wide_console")  # tests/conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained for one step (a checkpoint to resume), and its recordings."""
    from arvc.data.demo import generate_demo_voice

    root = tmp_path_factory.mktemp("lock")
    generate_demo_voice(root / "wav", seconds=12, sr=16000, seed=2)
    args = ["train", str(root / "wav"), "--runs-dir", str(root / "runs"), "--name", "s1"]
    result = runner.invoke(app, [*args, "--batch-size", "2", "--epochs", "1", "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    assert not (root / "runs" / "s1" / RUN_LOCK).exists(), "the lock is removed at the end of a run"
    return root / "runs" / "s1", root / "wav"


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run."""
    return shutil.copytree(trained[0], tmp_path / "runs" / "s1")


@pytest.fixture
def other_process():
    """A live process that is not this one (its PID written into a lock: another trainer)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait()


def _lock(run, pid, command="arvc train --resume runs/s1"):
    record = {"pid": pid, "host": socket.gethostname(), "since": 1.0, "command": command}
    (run / RUN_LOCK).write_text(json.dumps(record))


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_another_live_process_trains_is_refused_by_train_resume_and_a_new_run(run, other_process):
    _lock(run, other_process.pid)
    before = snapshot(run)
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2"])
    assert resumed.exit_code == 1, resumed.output
    assert resumed.output.startswith(
        f"error: {run} is being trained by another process (PID {other_process.pid}"
    )
    assert (
        "arvc train --resume runs/s1" in resumed.output and f"kill -INT {other_process.pid}" in resumed.output
    )
    fresh = runner.invoke(app, ["train", "--runs-dir", str(run.parent), "--name", "s1"])
    assert fresh.exit_code == 1 and f"PID {other_process.pid}" in fresh.output, fresh.output
    assert snapshot(run) == before, "nothing was changed"


def test_the_web_ui_neither_offers_nor_starts_a_run_another_process_trains(run, other_process):
    from arvc.train.request import TrainRequest
    from arvc.ui.app import runs_of
    from arvc.ui.jobs import Jobs

    assert runs_of(run.parent) == ["s1"]
    _lock(run, other_process.pid)
    assert runs_of(run.parent) == [], "not offered for resume while another process trains it"
    jobs = Jobs()
    with pytest.raises(RuntimeError, match=f"PID {other_process.pid}"):
        jobs.start_training(TrainRequest(resume=run, runs_dir=run.parent))
    assert jobs.status() is None


def test_compare_refuses_a_comparison_another_process_runs(tmp_path, trained, other_process):
    out = tmp_path / "compare" / "wav"
    out.mkdir(parents=True)
    _lock(out, other_process.pid, "arvc compare")
    args = ["compare", str(trained[1]), "--out-dir", str(out.parent), "--optimizers", "AdamW"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"error: {out} is being trained by another process (PID {other_process.pid}" in result.output
    assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK], "refused before any work"

    from arvc.ui.jobs import Jobs

    jobs = Jobs()
    with pytest.raises(RuntimeError, match=f"PID {other_process.pid}"):  # the web UI's Compare tab
        jobs.start_compare(trained[1], out, "AdamW")
    assert jobs.status() is None


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_removed_at_the_end(run):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock(run, dead.pid)
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert f"taking over a stale lock of PID {dead.pid}" in " ".join(result.output.split()), result.output
    assert not (run / RUN_LOCK).exists()


def test_a_lock_of_another_host_is_refused_naming_the_host_and_the_file_to_delete(run):
    """A lock written by a process on another machine sharing the folder cannot be checked (its PID means
    nothing here), so it is respected; the error said "stop it" and nothing about the other machine."""
    record = {"pid": 4242, "host": "render-node-7", "since": 1.0, "command": "arvc train --resume runs/s1"}
    (run / RUN_LOCK).write_text(json.dumps(record))
    before = snapshot(run)
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--max-steps", "2"])
    assert result.exit_code == 1, result.output
    flat = " ".join(result.output.split())
    assert flat.startswith(f"error: {run} is being trained by another process (PID 4242 on render-node-7")
    assert f"render-node-7 is another machine than this one ({socket.gethostname()})" in flat
    assert "stop it there (kill -INT 4242 on render-node-7)" in flat and "kill -INT 4242)" not in flat
    assert f"If render-node-7 is gone or PID 4242 no longer runs there, delete {run / RUN_LOCK}" in flat
    assert snapshot(run) == before, "nothing was changed"
    (run / RUN_LOCK).unlink()  # as the error says: then the run continues
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--max-steps", "2"])
    assert result.exit_code == 0, result.output


def test_the_lock_is_removed_after_an_error(run):
    from dataclasses import replace

    from arvc.train.errors import TrainError
    from arvc.train.loop import train
    from arvc.train.request import TrainRequest, plan_training

    options = plan_training(TrainRequest(resume=run, epochs=2, max_steps=2)).options
    # fails inside train(), after the lock was taken (a bad setting, e.g. lr nan, is refused before it)
    with pytest.raises(TrainError, match="cannot read the training data"):
        train(replace(options, data_dir=run / "no-data"))
    assert not (run / RUN_LOCK).exists()


def test_preprocess_refuses_a_run_another_process_trains(run, trained, other_process):
    """Its data would change under the trainer (pieces, features, filelist.txt)."""
    _lock(run, other_process.pid)
    before = snapshot(run)
    args = ["preprocess", str(trained[1]), "--runs-dir", str(run.parent), "--name", "s1"]
    result = runner.invoke(app, [*args, "--sample-rate", "16000"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        f"error: {run} is being trained by another process (PID {other_process.pid}"
    )
    assert snapshot(run) == before, "nothing was changed"


def test_preprocess_holds_the_lock_while_it_writes_and_removes_it(run, trained):
    from arvc.train import runlock

    seen = []
    real = runlock.run_lock

    def spy(folder):
        seen.append(folder)
        return real(folder)

    args = ["preprocess", str(trained[1]), "--runs-dir", str(run.parent), "--name", "fresh"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runlock, "run_lock", spy)
        result = runner.invoke(app, [*args, "--sample-rate", "16000"])
    assert result.exit_code == 0, result.output
    assert seen == [run.parent / "fresh"]
    assert (run.parent / "fresh" / "data" / "filelist.txt").is_file()
    assert not (run.parent / "fresh" / RUN_LOCK).exists()


def test_export_works_while_another_process_trains_the_run(run, other_process):
    """Allowed: it reads the newest checkpoint, which is written atomically; the trainer's own export at
    the end replaces it (docs/training.md). The lock stays the trainer's."""
    _lock(run, other_process.pid)
    lock = (run / RUN_LOCK).read_bytes()
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "export" / "model.safetensors").is_file()
    assert (run / RUN_LOCK).read_bytes() == lock


def test_export_of_a_run_in_training_takes_the_newest_checkpoint_again_when_the_one_it_chose_is_pruned(
    run, monkeypatch
):
    from arvc.train import export
    from arvc.train.checkpoint import latest_checkpoint

    newest = latest_checkpoint(run)
    calls = []

    def pruned_first(folder):  # the trainer saved a newer checkpoint and pruned this one meanwhile
        calls.append(folder)
        return newest.with_name("ckpt_pruned.pt") if len(calls) == 1 else latest_checkpoint(folder)

    monkeypatch.setattr(export, "latest_checkpoint", pruned_first)
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    assert f"exported {newest.name}" in result.output and len(calls) == 2
