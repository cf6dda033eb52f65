"""What `arvc` writes where its output is not a terminal (nohup, Colab, CI): the commands run as a user's
would, in a subprocess with stdout and stderr going to pipes, and the test reads what they wrote."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from arvc.data.demo import generate_demo_voice

SRC = str(Path(__file__).resolve().parents[2] / "src")
TIMEOUT = 600


def arvc(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("COLUMNS", None)  # rich's width for a file: its default, 80
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return subprocess.run(
        [sys.executable, "-m", "arvc", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def assert_no_wrapped_line(text: str) -> None:
    # rich padded and wrapped every line at 80 columns when writing to a file
    assert not any(line != line.rstrip() for line in text.splitlines()), text


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recordings")
    generate_demo_voice(folder, seconds=12, sr=16000, seed=2)
    return folder


def test_preprocess_says_each_skipped_file_once_and_counts_only_files_with_speech(recordings, tmp_path):
    folder = tmp_path / "voice"
    folder.mkdir()
    for wav in recordings.glob("*.wav"):
        (folder / wav.name).write_bytes(wav.read_bytes())
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    sf.write(folder / "silence.wav", np.zeros(16000 * 3, np.float32), 16000)

    args = ["preprocess", folder, "--name", "alice", "--sample-rate", "16000"]
    first = arvc(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # the warning came from the logger and again from Python's warnings
    assert len([line for line in first.stderr.splitlines() if "corrupt.wav" in line]) == 1, first.stderr
    assert first.stderr.count("unreadable") == 1 and "DataWarning" not in first.stderr, first.stderr
    # a silent recording gave no piece: it is skipped, named, and not counted as a source file
    assert first.stderr.count("silence.wav") == 1 and "no usable speech" in first.stderr, first.stderr
    assert re.search(r"pieces \([\d.]+ s\) from 1 files", first.stdout), first.stdout
    assert_no_wrapped_line(first.stdout + first.stderr)

    again = arvc(*args, cwd=tmp_path)  # everything is there already: nothing is redone, nor looks it
    assert again.returncode == 0, again.stderr
    assert "preprocessing" not in again.stdout + again.stderr, again.stdout
    assert re.search(r"reusing \d+ pieces", again.stdout + again.stderr), again.stdout + again.stderr


def test_training_written_to_a_file_logs_progress_lines_with_epochs_steps_and_eta(recordings, tmp_path):
    # 4 pieces at batch 2, nothing held out: 2 steps per epoch
    args = ["train", recordings, "--name", "bob", "--batch-size", "2", "--epochs", "2", "--val-fraction", "0"]
    done = arvc(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # a rich bar written to a file is drawn once, at the end: no step, no ETA while it runs
    assert "━" not in done.stdout, done.stdout
    progress = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    pattern = (
        r"epoch (\d)/2  step (\d)/4  mel [\d.]+  G [\d.]+  D [\d.]+  lr [\d.e+-]+  [\d.]+ s/step  "
        r"ETA \d+:\d\d:\d\d"
    )
    assert progress and all(re.fullmatch(pattern, line) for line in progress), done.stdout
    epochs_and_steps = [tuple(map(int, re.match(pattern, line).groups())) for line in progress]
    assert (1, 2) in epochs_and_steps and epochs_and_steps[-1] == (2, 4)  # each epoch's end, the last one too
    assert progress[-1].endswith("ETA 0:00:00")
    assert re.search(r"TensorBoard: .*tensorboard +loss plot: \S*loss\.png$", done.stdout, re.M), done.stdout
    assert_no_wrapped_line(done.stdout + done.stderr)
    assert "reusing" not in done.stderr and "preprocessed 4 pieces" in done.stderr

    resumed = arvc("train", "--resume", tmp_path / "runs" / "bob", "--epochs", "3", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # the data is there: no preprocessing bar (it showed "preprocessing 0/?", which looked like a redo)
    assert "preprocessing" not in resumed.stdout + resumed.stderr, resumed.stdout + resumed.stderr
    assert "reusing the preprocessed data" in resumed.stderr
    assert [line for line in resumed.stdout.splitlines() if line.startswith("epoch ")][-1].startswith(
        "epoch 3/3  step 6/6"
    )


def test_compare_written_to_a_file_logs_training_progress_lines_per_contestant(recordings, tmp_path):
    args = [
        "compare",
        recordings,
        "--optimizers",
        "AdamW",
        "--seeds",
        "1",
        "--epochs",
        "2",
        "--batch-size",
        "2",
    ]
    done = arvc(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "━" not in done.stdout, done.stdout  # no rich bar, drawn once at the end
    progress = [line for line in done.stdout.splitlines() if line.startswith("1/1 AdamW seed 1234: ")]
    pattern = (
        r"1/1 AdamW seed 1234: epoch (\d)/2  step (\d)/(\d)  mel [\d.]+  G [\d.]+  D [\d.]+  lr [\d.e+-]+  "
        r"[\d.]+ s/step  ETA \d+:\d\d:\d\d"
    )
    assert progress and all(re.fullmatch(pattern, line) for line in progress), done.stdout
    assert re.match(pattern, progress[-1]).group(1) == "2" and progress[-1].endswith("ETA 0:00:00")
    assert "report: " in done.stdout
    assert_no_wrapped_line(done.stdout + done.stderr)
