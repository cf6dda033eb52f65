"""Real write failures, not mocks: each write runs in a child process whose file size limit is too small.

`RLIMIT_FSIZE` with SIGXFSZ ignored makes every write past the limit fail with EFBIG ("File too large"),
as a full disk fails with ENOSPC: torch's zip writer then raises RuntimeError ("unexpected pos ..."),
soundfile LibsndfileError ("System error."), safetensors SafetensorError, numpy OSError. A read-only
folder cannot stand in for them here: the tests run as root, and root ignores permission bits (chmod
0o555 does not stop it), so the size limit is the failure every machine can produce. Both the limit and
the ignored signal are inherited by the child (set in `preexec_fn`, before exec).

Each test asserts what a user needs: a clear message naming the file, the previous file byte-identical,
and no temporary file left behind.
"""

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE (POSIX)")

SRC = str(Path(__file__).resolve().parents[1] / "src")


def limited(max_bytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def run_limited(max_bytes: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "300"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        preexec_fn=limited(max_bytes),
        capture_output=True,
        text=True,
        timeout=600,
    )


def python_limited(max_bytes: int, code: str, cwd: Path) -> dict:
    """Run `code` under the limit; its last stdout line is one JSON object describing what it saw."""
    done = run_limited(max_bytes, ["-c", textwrap.dedent(code)], cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*.tmp*")]


CATCH = """
    def attempt(write):
        try:
            write()
        except Exception as error:
            return {"type": type(error).__name__, "message": str(error),
                    "cause": type(error.__cause__).__name__ if error.__cause__ else None}
        return {"type": None}
"""


def test_a_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path):
    import torch

    from arvc.train.checkpoint import atomic_save

    path = tmp_path / "ckpt.pt"
    atomic_save({"weights": torch.ones(1000)}, path)
    before = path.read_bytes()
    seen = python_limited(
        100_000,
        CATCH
        + f"""
    import json, torch
    from arvc.train.checkpoint import atomic_save
    print(json.dumps(attempt(lambda: atomic_save({{"weights": torch.randn(1_000_000)}}, {str(path)!r}))))
    """,
        tmp_path,
    )
    assert seen["type"] == "WriteError" and seen["cause"] == "RuntimeError"  # torch's "unexpected pos"
    assert f"could not write {path}" in seen["message"] and "free space" in seen["message"]
    assert path.read_bytes() == before
    assert temporaries(tmp_path) == []


def test_export_that_cannot_be_written_keeps_the_previous_model(tmp_path):
    from arvc.config import load_config
    from arvc.model import Synthesizer
    from arvc.modelfile.export import export_generator

    out = tmp_path / "export"
    export_generator(Synthesizer(load_config("tiny")), load_config("tiny"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    seen = python_limited(
        50_000,
        CATCH
        + f"""
    import json, torch
    from arvc.config import load_config
    from arvc.model import Synthesizer
    from arvc.modelfile.export import export_generator
    torch.manual_seed(1)
    cfg = load_config("tiny")
    print(json.dumps(attempt(lambda: export_generator(Synthesizer(cfg), cfg, {str(out)!r}))))
    """,
        tmp_path,
    )
    assert seen["type"] == "WriteError" and seen["cause"] == "SafetensorError"
    assert f"could not write {out / 'model.safetensors'}" in seen["message"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert temporaries(tmp_path) == []


def test_preprocess_that_cannot_write_is_a_clear_cli_error(tmp_path):
    from arvc.data.demo import generate_demo_voice

    generate_demo_voice(tmp_path / "wav", seconds=8, sr=16000, seed=3)
    # The recordings exist already; the 16 kHz float WAV slices (64 kB per second) exceed 20 kB.
    done = run_limited(
        20_000,
        ["-m", "arvc", "preprocess", "wav", "--name", "x", "--runs-dir", "runs", "--sample-rate", "16000"],
        tmp_path,
    )
    output = " ".join((done.stdout + done.stderr).split())  # rich wraps long lines
    assert done.returncode == 1, output
    assert "error: could not write" in output and "LibsndfileError" in output, output
    assert "Traceback" not in output
    assert temporaries(tmp_path / "runs") == []


def test_metrics_that_cannot_be_appended_keep_the_rows_already_written(tmp_path):
    from arvc.train.logs import RunLog, read_metrics

    log = RunLog(tmp_path, resume_step=None)
    log.log_step({"epoch": 1, "step": 1, "loss_mel": 50.0, "seconds": 0.5})
    log.close()
    before = (tmp_path / "metrics.csv").read_bytes()
    seen = python_limited(
        len(before) + 10,  # room for a few bytes of the next row, not for all of it
        CATCH
        + f"""
    import json, pathlib
    from arvc.train.logs import RunLog
    log = RunLog.__new__(RunLog)  # the appending half of a RunLog, without TensorBoard
    log.run_dir, log.csv_path = None, pathlib.Path({str(tmp_path / "metrics.csv")!r})
    row = {{"epoch": 1, "step": 2, "loss_mel": 49.123456789, "lr_g": 0.001, "seconds": 0.5}}
    print(json.dumps(attempt(lambda: log.log_step(row))))
    """,
        tmp_path,
    )
    assert seen["type"] == "WriteError" and seen["cause"] == "OSError"
    assert "could not write" in seen["message"] and "metrics.csv" in seen["message"]
    assert (tmp_path / "metrics.csv").read_bytes().startswith(before)
    assert [row["step"] for row in read_metrics(tmp_path)] == ["1"]  # the torn row is not read as data


def test_train_reports_a_checkpoint_it_cannot_write_and_the_previous_one_is_intact(tmp_path):
    """End to end: a run with one checkpoint is resumed under a limit the next checkpoint exceeds; the
    documented "the previous checkpoint is intact" message appears (it never fired for real failures)."""
    from arvc.data.demo import generate_demo_voice
    from arvc.train.checkpoint import list_checkpoints

    generate_demo_voice(tmp_path / "wav", seconds=8, sr=16000, seed=3)
    common = ["--batch-size", "2", "--val-fraction", "0", "--max-steps"]
    first = run_limited(
        2**40, ["-m", "arvc", "train", "wav", "--name", "r", "--epochs", "1", *common, "1"], tmp_path
    )
    assert first.returncode == 0, first.stdout + first.stderr
    run = tmp_path / "runs" / "r"
    (previous,) = list_checkpoints(run)
    before = previous.read_bytes()
    assert len(before) > 1_000_000  # the limit below is smaller than a checkpoint, larger than the logs
    second = run_limited(
        1_000_000, ["-m", "arvc", "train", "--resume", str(run), "--epochs", "2", *common, "2"], tmp_path
    )
    output = " ".join((second.stdout + second.stderr).split())  # rich wraps long lines
    assert second.returncode == 1, output
    assert f"error: checkpoint not saved: could not write {run / 'checkpoints'}" in output, output
    assert "RuntimeError" in output and f"The previous checkpoint {previous}" in output, output
    assert "is intact" in output and "Traceback" not in output
    assert list_checkpoints(run) == [previous] and previous.read_bytes() == before
    assert temporaries(run) == []


def test_infer_that_cannot_write_its_output_is_one_error_line(tmp_path):
    """The conversion is done, the write fails: one `error:` line naming the output (it was a traceback)."""
    import numpy as np
    import soundfile as sf
    import torch

    from arvc.config import load_config
    from arvc.model import Synthesizer
    from arvc.modelfile.export import export_generator

    cfg = load_config("tiny")
    torch.manual_seed(0)
    export_generator(Synthesizer(cfg), cfg, tmp_path / "export", features="mel")
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "in.wav", (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    out = tmp_path / "out.wav"
    # 16-bit at 16 kHz: the second of output is 32 kB, more than the 20 kB the process may write
    done = run_limited(20_000, ["-m", "arvc", "infer", "export", "in.wav", "out.wav"], tmp_path)
    output = " ".join((done.stdout + done.stderr).split())  # rich wraps long lines
    assert done.returncode == 1, output
    assert "error: could not write out.wav" in output and "LibsndfileError" in output, output
    assert "Traceback" not in output
    assert not out.exists() and temporaries(tmp_path) == []
