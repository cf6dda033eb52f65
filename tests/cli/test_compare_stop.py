"""`arvc compare` stopped by a signal: the shell's status of the signal (as `arvc train`), and a second
Ctrl-C during a checkpoint write ends the comparison instead of going on to the next contestant."""

import pytest
from typer.testing import CliRunner

from arvc.cli import app
from arvc.compare import runner
from arvc.train.errors import SaveInterrupted

ARGS = ["--optimizers", "AdamW,RAdam", "--seeds", "1", "--epochs", "1", "--batch-size", "2"]


def compare(recordings, out):
    return CliRunner().invoke(app, ["compare", str(recordings), "--out-dir", str(out), *ARGS])


def test_a_second_ctrl_c_during_a_save_ends_the_comparison_with_its_status(
    three_recordings, tmp_path, monkeypatch
):
    """It was taken as one contestant failing: the next contestant trained, and the exit status was 1."""
    ran = []

    def interrupted(variant, run_dir, cfg, contest):  # the first contestant's save, cut by a second Ctrl-C
        ran.append(variant.name)
        raise SaveInterrupted("SIGINT again while checkpoint X was being written", 130)

    monkeypatch.setattr(runner, "_run_one", interrupted)
    result = compare(three_recordings, tmp_path)
    assert ran == ["AdamW"], "no contestant trains after the second Ctrl-C"
    assert result.exit_code == 130, result.output
    assert "error:" in result.output and "SIGINT again while checkpoint" in result.output, result.output


@pytest.mark.parametrize("name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stopped_comparison_exits_with_the_signals_status(
    three_recordings, tmp_path, monkeypatch, name, status
):
    """It exited 0, so `arvc compare ... && next` went on as if the comparison were done."""
    monkeypatch.setattr(runner, "_run_one", lambda variant, run_dir, cfg, contest: (None, name))
    result = compare(three_recordings, tmp_path)
    assert result.exit_code == status, result.output
    assert f"stopped by {name}" in result.output and f"exit status {status}" in result.output, result.output
    assert "run the same command again to continue" in result.output
    assert list(tmp_path.glob("*/report.md")), "the report is written before the exit"
