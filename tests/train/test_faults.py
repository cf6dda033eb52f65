"""Faults a run must survive: signals, non-finite steps, and stopping in the middle of an epoch."""

import csv
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
import trainkit

from arvc.train.callbacks import Callbacks
from arvc.train.checkpoint import latest_checkpoint, load_checkpoint
from arvc.train.faults import exit_status, interrupted
from arvc.train.loop import STOP_REQUEST, TrainError, TrainOptions, TrainResult, train

tiny = partial(trainkit.tiny, batch_size=2)


@pytest.mark.parametrize(
    "stopped_by, stopped_before_the_end, status",
    [
        (None, False, None),  # every epoch trained: exported
        ("max_steps", False, None),  # --max-steps: exported
        ("early_stop", False, None),  # held-out mel L1 stopped improving: exported
        ("SIGINT", True, 130),  # Ctrl-C: checkpoint saved, resume to continue, the shell sees 130
        ("SIGTERM", True, 143),
        (STOP_REQUEST, True, None),  # the web UI's Stop: as Ctrl-C, but no shell to tell
    ],
)
def test_the_one_table_of_how_a_run_stopped(stopped_by, stopped_before_the_end, status):
    """How a stop is classified is decided once (arvc.train.faults) and read by the loop, the CLI, the web UI
    and compare through it: interrupted or finished, and the exit status."""
    result = TrainResult(2, 6, None, {}, {}, stopped_by)
    assert interrupted(stopped_by) is stopped_before_the_end and result.interrupted is stopped_before_the_end
    assert exit_status(stopped_by) == status


def test_the_run_summary_says_where_and_why_it_stopped_early():
    assert TrainResult(2, 6, None, {}, {}, "max_steps").summary() == "trained 2 epochs (6 steps)"
    early = TrainResult(2, 6, None, {}, {}, "early_stop").summary(Path("runs/alice"))
    assert early == (
        "trained 2 epochs (6 steps) in runs/alice, stopped early (held-out mel L1 stopped improving)"
    )


def test_stopping_mid_epoch_then_resuming_is_bit_identical(tmp_path, data_dir):
    straight = train(TrainOptions(run_dir=tmp_path / "straight", data_dir=data_dir, config=tiny()))
    steps_per_epoch = straight.steps_done // 2
    assert steps_per_epoch >= 3

    cut = steps_per_epoch + 2  # in the middle of the second epoch
    first = train(TrainOptions(run_dir=tmp_path / "split", data_dir=data_dir, config=tiny(), max_steps=cut))
    checkpoint = load_checkpoint(first.last_checkpoint)
    assert (checkpoint["epoch"], checkpoint["batch_in_epoch"], checkpoint["step"]) == (1, 2, cut)
    torch.manual_seed(999)
    resumed = train(
        TrainOptions(run_dir=tmp_path / "split", data_dir=data_dir, config=tiny(), resume=tmp_path / "split")
    )
    assert resumed.steps_done == straight.steps_done
    a = load_checkpoint(latest_checkpoint(tmp_path / "straight"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "split"))
    for key in ("generator", "discriminator"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


def test_non_finite_steps_are_skipped_then_training_stops(tmp_path, data_dir, monkeypatch):
    train(TrainOptions(run_dir=tmp_path / "run", data_dir=data_dir, config=tiny(epochs=1)))
    good = latest_checkpoint(tmp_path / "run")

    import arvc.train.step as step_module

    monkeypatch.setattr(step_module, "kl_loss", lambda *args: torch.tensor(float("nan")))
    with pytest.raises(TrainError, match="3 steps in a row.*lower --lr"):
        train(
            TrainOptions(
                run_dir=tmp_path / "run",
                data_dir=data_dir,
                config=tiny(epochs=2),
                resume=tmp_path / "run",
                max_bad_steps=3,
            )
        )
    assert latest_checkpoint(tmp_path / "run") == good, "nothing is saved after divergence"
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["skipped"] for r in rows[-3:]] == ["generator"] * 3
    assert all(r["skipped"] == "" for r in rows[:-3])


def test_skipped_update_leaves_the_optimizer_state_untouched(tmp_path, data_dir, monkeypatch):
    import arvc.train.step as step_module

    real_kl = step_module.kl_loss
    calls = {"n": 0}

    def nan_on_second_call(*args):
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] == 2 else real_kl(*args)

    monkeypatch.setattr(step_module, "kl_loss", nan_on_second_call)
    result = train(TrainOptions(run_dir=tmp_path / "run", data_dir=data_dir, config=tiny(), max_steps=3))
    state = load_checkpoint(result.last_checkpoint)["optim_g"]["state"]["state"]
    assert {float(s["step"]) for s in state.values()} == {2.0}, "the generator stepped twice in three steps"
    state_d = load_checkpoint(result.last_checkpoint)["optim_d"]["state"]["state"]
    assert {float(s["step"]) for s in state_d.values()} == {3.0}


SCRIPT = """
import sys
from pathlib import Path
from arvc.config import apply_overrides, load_config
from arvc.train.loop import TrainOptions, train
cfg = apply_overrides(load_config("tiny"), {"train.batch_size": 2, "train.epochs": 50, "train.save_every": 50,
                                            "train.log_interval": 1})
result = train(TrainOptions(run_dir=Path(sys.argv[1]), data_dir=Path(sys.argv[2]), config=cfg))
print("STOPPED_BY", result.stopped_by)
"""


def test_weights_gone_non_finite_are_never_a_checkpoint_and_the_good_one_is_kept(tmp_path, data_dir):
    """Weights that became NaN (losses stay finite for a while: nothing is skipped) were saved as a
    checkpoint at the next save, and keep_last=1 then deleted the last good one. Now the save is refused
    with an error naming the good checkpoint, which stays."""

    class NanWeightsInEpoch2(Callbacks):
        def on_start(self, total_epochs, steps_per_epoch, start_epoch):
            self.per_epoch = steps_per_epoch

        def on_step(self, epoch, step, losses, lr):
            if step == self.per_epoch + 1:
                with torch.no_grad():
                    next(iter(net_d_params)).fill_(float("nan"))  # the discriminator's first weight

    import arvc.train.loop as loop

    net_d_params = []
    build = loop._build_run

    def build_run(*args, **kwargs):
        run = build(*args, **kwargs)
        net_d_params.extend(run.net_d.parameters())
        return run

    options = trainkit.options(tmp_path, data_dir, config=tiny(epochs=3, keep_last=1, val_fraction=0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "_build_run", build_run)
        with pytest.raises(TrainError) as raised:
            train(options, callbacks := NanWeightsInEpoch2())
    good = tmp_path / "run" / "checkpoints" / f"ckpt_E00001_S{callbacks.per_epoch:08d}.pt"
    message = str(raised.value)
    assert "non-finite" in message and "discriminator." in message, message
    assert f"The last good checkpoint is {good}" in message and "--lr" in message
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt")] == [good.name]
    assert all(torch.isfinite(t).all() for t in load_checkpoint(good)["discriminator"].values())


def _wait_for_rows(csv_path, rows, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if csv_path.exists() and len(csv_path.read_text().splitlines()) > rows:
            return
        time.sleep(0.2)
    raise AssertionError(f"no training progress in {csv_path} after {timeout} s")


def test_a_stop_request_from_another_thread_saves_like_ctrl_c(tmp_path, data_dir):
    """TrainOptions.stop (the web UI's Stop button): set from another thread while training runs, the
    step finishes, a checkpoint of exactly that step is written, nothing is exported, resume continues."""
    import threading

    stop = threading.Event()

    class SetAfterTwoSteps(Callbacks):
        def on_step(self, epoch, step, losses, lr):
            if step == 2:
                threading.Thread(target=stop.set).start()  # another thread, as the UI's server is
                time.sleep(0.2)

    run = tmp_path / "run"
    result = train(TrainOptions(run_dir=run, data_dir=data_dir, config=tiny(), stop=stop), SetAfterTwoSteps())
    assert result.stopped_by == STOP_REQUEST and result.interrupted and result.exports == {}
    assert load_checkpoint(result.last_checkpoint)["step"] == result.steps_done == 2
    resumed = train(TrainOptions(run_dir=run, data_dir=data_dir, config=tiny(), resume=run, max_steps=3))
    assert resumed.steps_done == 3


def _train_cli(tmp_path, data_dir, *args) -> tuple[subprocess.Popen, Path]:
    """`arvc train` of the preprocessed demo voice in a child process (its data copied into the run, so
    preparing it again skips every file); 50 epochs, a log row every step: it runs until stopped."""
    import shutil

    run = tmp_path / "runs" / "wav"
    if not (run / "data").exists():
        shutil.copytree(data_dir, run / "data")
    command = [sys.executable, "-m", "arvc", "train", str(data_dir.parent / "wav"), "--runs-dir"]
    command += [str(tmp_path / "runs"), "--batch-size", "2", "--epochs", "50", "--save-every", "50"]
    process = subprocess.Popen(
        [*command, "--set", "train.log_interval=1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250"},
    )
    return process, run


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_finishes_the_step_saves_and_exits_with_its_status(tmp_path, data_dir, signum, status):
    """`arvc train`, signalled: the step finishes, a checkpoint of it is saved, and the exit status is the
    signal's (128 + its number), so `arvc train ... && arvc export ...` stops there (it was 0)."""
    from typer.testing import CliRunner

    from arvc.cli import app

    process, run = _train_cli(tmp_path, data_dir)
    try:
        _wait_for_rows(run / "metrics.csv", 2)
        second = CliRunner().invoke(app, ["train", "--resume", str(run)])  # while the first trains
        assert second.exit_code == 1 and f"(PID {process.pid} on" in second.output, second.output
        process.send_signal(signum)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == status, output
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in output and f"exit status {status}" in output, output
    assert f"continue with: arvc train --resume {run}" in output
    checkpoint = load_checkpoint(latest_checkpoint(run))
    with (run / "metrics.csv").open() as handle:
        last_logged = int(list(csv.DictReader(handle))[-1]["step"])
    assert checkpoint["step"] == last_logged
    assert not (run / "export").exists(), "a stopped run is not exported"
    assert not (run / ".arvc-run.lock").exists(), "the run lock is removed after a stop"


def test_a_second_ctrl_c_during_the_save_is_reported_as_such(tmp_path, data_dir, monkeypatch):
    """Ctrl-C, then Ctrl-C again while the checkpoint is being written: torch's writer fails ("unexpected
    pos"), which was reported as a full disk or a read-only folder; it is the user's second Ctrl-C."""
    from arvc._files import atomic_file
    from arvc.train import loop

    first = train(trainkit.options(tmp_path, data_dir, batch_size=2, max_steps=1))

    class SecondCtrlCWhileWriting:  # the file torch writes to; the user presses Ctrl-C again meanwhile
        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

    def save(state, path):  # arvc.train.checkpoint.atomic_save, through the file above
        with atomic_file(path) as temporary, open(temporary, "wb") as handle:
            torch.save(state, SecondCtrlCWhileWriting(handle))

    class CtrlCAtStep2(Callbacks):
        def on_step(self, epoch, step, losses, lr):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop, "atomic_save", save)
    options = trainkit.options(tmp_path, data_dir, batch_size=2, resume=tmp_path / "run", max_steps=5)
    # The second Ctrl-C re-raises SIGINT with the handler the process had before the run: Python's default
    # (KeyboardInterrupt), as in a terminal, whatever pytest inherited (a shell's background job starts
    # with SIGINT ignored, and Python then keeps it ignored).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(BaseException) as raised:
            train(options, CtrlCAtStep2())
    finally:
        signal.signal(signal.SIGINT, before)
    message = str(raised.value)
    assert type(raised.value).__name__ == "SaveInterrupted" and raised.value.exit_status == 130, message
    assert "SIGINT again while checkpoint" in message and "disk" in message and "full" not in message
    assert f"{first.last_checkpoint} is intact" in message and "--resume" in message
    assert latest_checkpoint(tmp_path / "run") == first.last_checkpoint
    assert not list((tmp_path / "run" / "checkpoints").glob(".*.tmp")), "the unfinished save is removed"


def test_kill_9_at_random_moments_never_loses_a_checkpoint(tmp_path, data_dir):
    """Five trials: SIGKILL at a random moment (a checkpoint every epoch), then check the run, resume it."""
    import random

    from arvc.train.checkpoint import list_checkpoints

    rng = random.Random(7)
    run = tmp_path / "run"
    script = SCRIPT.replace('"train.save_every": 50', '"train.save_every": 1')
    for trial in range(5):
        args = [str(run), str(data_dir)] + (["resume"] if trial else [])
        process = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT.replace("{script}", script), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            rows_before = (
                len((run / "metrics.csv").read_text().splitlines()) if (run / "metrics.csv").exists() else 1
            )
            _wait_for_rows(run / "metrics.csv", rows_before + 1)
            time.sleep(rng.uniform(0.0, 2.5))
        finally:
            process.kill()
            process.wait(timeout=30)
        checkpoints = list_checkpoints(run)
        if checkpoints:
            load_checkpoint(checkpoints[-1])  # the newest complete checkpoint always loads
        with (run / "metrics.csv").open() as handle:
            list(csv.DictReader(handle))  # parseable, even if the last line was torn

    result = train(TrainOptions(run_dir=run, data_dir=data_dir, config=tiny(epochs=3), resume=run))
    assert result.stopped_by is None
    assert not list((run / "checkpoints").glob(".*.tmp")), "unfinished saves are cleaned up"
    with (run / "metrics.csv").open() as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == list(range(1, result.steps_done + 1)), "every step exactly once, in order"


KILL_SCRIPT = """
import sys
if len(sys.argv) > 3:  # later trials continue the run, as a user would after a crash
    from arvc.train import loop
    from arvc.train.checkpoint import latest_checkpoint
    from pathlib import Path
    _train = loop.train
    def train(opts, *a, **k):
        if latest_checkpoint(Path(sys.argv[1])) is not None:
            opts = loop.replace(opts, resume=Path(sys.argv[1]))
        return _train(opts, *a, **k)
    loop.train = train
{script}
"""
