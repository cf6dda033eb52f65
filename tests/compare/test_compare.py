"""`arvc compare` end to end on 20 s of the demo voice: report, held-out split, skip and resume."""

import json
import signal

import pytest
from typer.testing import CliRunner

from arvc.compare import VARIANTS, resolve_optimizers, run_compare
from arvc.compare.evaluate import HOLDOUT_FILE
from arvc.compare.report import COLUMNS, FIGURES
from arvc.data.demo import generate_demo_voice

SMALL = {"train.batch_size": 2}


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    root = tmp_path_factory.mktemp("voice")
    generate_demo_voice(root, seconds=20, sr=16000, seed=1)
    return root


@pytest.fixture(scope="module")
def compared(voice, tmp_path_factory):
    """Two optimizers, 2 epochs; the second run is interrupted by SIGTERM mid-epoch, then continued."""
    out = tmp_path_factory.mktemp("compare") / "run"
    events = []

    def interrupt(event, **info):
        events.append((event, info.get("name"), info.get("step")))
        if event == "step" and info["step"] == 4 and any(e[1] == "RAdam" for e in events):
            signal.raise_signal(signal.SIGTERM)

    first = run_compare(voice, out, ["AdamW", "RAdam"], epochs=2, overrides=SMALL, progress=interrupt)
    assert first.stopped_by == "SIGTERM"
    assert (out / "runs" / "AdamW" / "result.json").is_file()
    assert not (out / "runs" / "RAdam" / "result.json").exists()
    stamp = (out / "runs" / "AdamW" / "result.json").stat().st_mtime_ns

    second_events = []
    second = run_compare(
        voice,
        out,
        "AdamW,RAdam",
        epochs=2,
        overrides=SMALL,
        progress=lambda e, **i: second_events.append((e, i)),
    )
    return out, second, stamp, second_events


def test_report_has_table_and_figures(compared):
    out, result, _, _ = compared
    assert result.stopped_by is None and set(result.results) == {"AdamW", "RAdam"}
    md = (out / "report.md").read_text()
    assert "| " + " | ".join(COLUMNS) + " |" in md
    for name in ("AdamW", "RAdam"):
        assert f"| {name} |" in md
    for figure in FIGURES:
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES) and "<table>" in page


def test_results_hold_every_measurement(compared):
    _, result, _, _ = compared
    for r in result.results.values():
        assert r["epochs"] == 2 and len(r["epoch_records"]) == 2
        assert [x["epoch"] for x in r["epoch_records"]] == [1, 2]
        assert 0 < r["final_heldout_mel_l1"] and r["best_heldout_mel_l1"] <= r["final_heldout_mel_l1"]
        assert 0 < r["optimizer_share"] < 1 and r["wall_s"] > 0
        assert r["state_bytes_per_param"] == pytest.approx(8, abs=0.1)  # two fp32 moments (+ step counters)
        assert r["skipped_steps"] == 0 and r["nonfinite_steps"] == 0
        assert r["epoch_records"][1]["lr"] < r["epoch_records"][0]["lr"]  # RVC's exponential decay


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(compared):
    out, result, stamp, events = compared
    assert (out / "runs" / "AdamW" / "result.json").stat().st_mtime_ns == stamp
    assert ("skip", {"name": "AdamW"}) in events
    steps = [i["step"] for e, i in events if e == "step"]
    assert steps and steps[0] == 5  # RAdam continued after the step it was stopped at
    assert result.results["RAdam"]["steps"] == 6


def test_held_out_pieces_are_never_trained_on(compared):
    out, _, _, _ = compared
    held = set((out / HOLDOUT_FILE).read_text().split())
    trained = set((out / "train_data" / "filelist.txt").read_text().split())
    assert held and trained and not held & trained
    assert len(held) + len(trained) == len((out / "data" / "filelist.txt").read_text().split())


def test_third_call_redoes_nothing(compared, voice):
    out, _, _, _ = compared
    events = []
    run_compare(
        voice, out, ["AdamW", "RAdam"], epochs=2, overrides=SMALL, progress=lambda e, **i: events.append(e)
    )
    assert "step" not in events and events.count("skip") == 2
    assert json.loads((out / "runs" / "RAdam" / "result.json").read_text())["steps"] == 6


def test_another_setup_in_the_same_folder_is_refused(compared, voice):
    out, _, _, _ = compared
    before = (out / "compare.json").read_text()
    with pytest.raises(ValueError, match="config"):
        run_compare(voice, out, ["AdamW"], epochs=3, overrides=SMALL)
    assert (out / "compare.json").read_text() == before


def test_a_failing_optimizer_does_not_stop_the_others(voice, tmp_path, monkeypatch):
    import arvc.compare.runner as runner

    real_train = runner.train

    def train(options, callbacks):
        if options.optimizer == "AdaBelief":
            raise ImportError("no such kernel")
        return real_train(options, callbacks)

    monkeypatch.setattr(runner, "train", train)
    result = run_compare(voice, tmp_path, "AdaBelief,AdamW", epochs=1, overrides=SMALL, max_steps=1)
    assert result.results["AdaBelief"] == {"name": "AdaBelief", "error": "ImportError: no such kernel"}
    assert result.results["AdamW"]["steps"] == 1
    assert "| AdaBelief | failed: ImportError: no such kernel |" in (tmp_path / "report.md").read_text()


def test_optimizer_names():
    assert [v.name for v in resolve_optimizers("all")] == list(VARIANTS)
    assert len(VARIANTS) == 8
    assert [v.name for v in resolve_optimizers("adamw, anyprecisionadamw-bf16-kahan")] == [
        "AdamW",
        "AnyPrecisionAdamW-bf16-kahan",
    ]
    with pytest.raises(ValueError, match="AdamW\\+8bit"):
        resolve_optimizers("Adam")


def test_cli_refuses_bad_input_before_any_work(tmp_path):
    import arvc.cli
    import arvc.cli.compare  # noqa: F401  (registers the command)

    runner = CliRunner()
    result = runner.invoke(arvc.cli.app, ["compare", "--optimizers", "Nope", "--out-dir", str(tmp_path)])
    assert result.exit_code == 1 and "unknown optimizer" in result.output
    result = runner.invoke(arvc.cli.app, ["compare", str(tmp_path / "missing"), "--out-dir", str(tmp_path)])
    assert result.exit_code == 1 and "does not exist" in " ".join(result.output.split())
    assert not any(tmp_path.iterdir())
