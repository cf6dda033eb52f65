"""A comparison of short runs is marked as a quick look, and its lr figure reads plainly."""

import pytest
from rich.console import Console
from typer.testing import CliRunner

import arvc.cli
import arvc.cli._app
import arvc.cli.compare  # noqa: F401  (registers the command)
import arvc.compare.report as report
from arvc.compare.report import MIN_RANKING_STEPS
from arvc.data.demo import generate_demo_voice


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """AdamW and RAdam, one seed, 2 epochs of 3 steps (20 s of audio, batch 2): 6-step runs. The figures
    are kept open to be read."""
    voice = tmp_path_factory.mktemp("voice")
    generate_demo_voice(voice, seconds=20, sr=16000, seed=1)
    folder = tmp_path_factory.mktemp("compare")
    figures = {}
    real_save = report._save

    def keep(fig, path):
        figures[path.name] = fig
        return real_save(fig, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "_save", keep)
        patch.setattr(arvc.cli.compare, "console", Console(width=300))
        args = ["compare", str(voice), "--optimizers", "AdamW,RAdam", "--seeds", "1", "--epochs", "2"]
        result = CliRunner().invoke(
            arvc.cli.app, [*args, "--batch-size", "2", "--out-dir", str(folder), "--name", "c"]
        )
    assert result.exit_code == 0, result.output
    return folder / "c", result.output, figures


def test_short_runs_are_warned_about_and_the_report_is_marked(compared):
    out, output, _ = compared
    said = f"runs of 6 steps, fewer than the {MIN_RANKING_STEPS} a ranking needs"
    assert f"warning: {said}" in output
    md = (out / "report.md").read_text()
    assert f"**Preliminary: {said}" in md
    assert "(lower is better) — PRELIMINARY, runs of 6 steps:" in md
    assert f"Preliminary: {said}" in (out / "report.html").read_text()


def test_the_lr_figure_shows_plain_lr_values_and_whole_epochs(compared):
    _, _, figures = compared
    fig = figures["lr_schedule.png"]
    fig.canvas.draw()
    (ax,) = fig.axes
    assert ax.yaxis.get_offset_text().get_text() == "", "no 1e-7+1e-3 offset"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(set(labels)) == len(labels) > 1, labels
    for label, value in zip(labels, ax.get_yticks(), strict=True):  # each label is its lr, in full
        assert float(label.replace("−", "-")) == pytest.approx(value, rel=1e-6, abs=1e-12), (label, value)
    epochs = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert epochs and all(float(t).is_integer() for t in epochs), epochs


def test_long_enough_runs_are_not_marked():
    runs = {"AdamW": {"name": "AdamW", "runs": [{"seed": 1, "steps": MIN_RANKING_STEPS}]}}
    assert report.short_runs(runs) is None
    runs["RAdam"] = {"name": "RAdam", "runs": [{"seed": 1, "steps": 12}]}
    assert report.short_runs(runs) == 12
