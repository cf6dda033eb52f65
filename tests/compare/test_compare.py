"""`arvc compare` end to end on 20 s of the demo voice: report, held-out split, skip and resume."""

import html
import importlib.util
import json
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from arvc.audio.score import SCORE_NAMES
from arvc.compare import VARIANTS, resolve_optimizers, run_compare
from arvc.compare.evaluate import SPLIT_FILE
from arvc.compare.report import COLUMNS, EARLY_HEADING, FIGURES, SCORES_HEADING, summarize
from arvc.data.demo import generate_demo_voice
from arvc.optim import OPTIMIZERS

SMALL = {"train.batch_size": 2}
SETUP = {"epochs": 2, "seeds": 2, "warmup_epochs": 2, "overrides": SMALL}


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    root = tmp_path_factory.mktemp("voice")
    generate_demo_voice(root, seconds=20, sr=16000, seed=1)
    return root


@pytest.fixture(scope="module")
def compared(voice, tmp_path_factory):
    """Two optimizers x 2 seeds, 2 epochs, paired schedules with a 2-epoch warm-up; the last run
    (AdaBeliefV2, seed 1235) is interrupted by SIGTERM mid-epoch, then continued."""
    out = tmp_path_factory.mktemp("compare") / "run"
    events = []

    def interrupt(event, **info):
        events.append((event, info.get("name"), info.get("seed"), info.get("step")))
        last = [e for e in events if e[0] == "run"][-1]
        if event == "step" and info["step"] == 4 and last[1:3] == ("AdaBeliefV2", 1235):
            signal.raise_signal(signal.SIGTERM)

    first = run_compare(voice, out, ["AdamW", "AdaBeliefV2"], progress=interrupt, **SETUP)
    assert first.stopped_by == "SIGTERM"
    assert (out / "runs" / "AdamW" / "seed-1235" / "result.json").is_file()
    assert not (out / "runs" / "AdaBeliefV2" / "seed-1235" / "result.json").exists()
    stamp = (out / "runs" / "AdamW" / "seed-1234" / "result.json").stat().st_mtime_ns

    second_events = []
    second = run_compare(
        voice, out, "AdamW,AdaBeliefV2", progress=lambda e, **i: second_events.append((e, i)), **SETUP
    )
    return out, second, stamp, second_events


def test_report_has_table_and_figures(compared):
    out, result, _, _ = compared
    assert result.stopped_by is None and set(result.results) == {"AdamW", "AdaBeliefV2"}
    md = (out / "report.md").read_text()
    assert "| " + " | ".join(COLUMNS) + " |" in md
    for name, entry in result.results.items():
        s = summarize(entry)
        # the row shows mean (min-max) over both seeds, recomputed here from the per-seed results
        finals = [r["final_heldout_mel_l1"] for r in entry["runs"]]
        assert s["final"] == (sum(finals) / 2, min(finals), max(finals))
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
        assert f"| {s['schedule']} | 2 | {s['final'][0]:.4g} ({min(finals):.4g}–{max(finals):.4g}) |" in row
    assert "Ranked by mean final held-out mel L1" in md and "overlap" in md
    # the held-out scores: the last epoch scores everything, per seed, in the table, its rankings and a figure
    # (speaker similarity where resemblyzer, the arvc[score] extra that is not in `dev`, is installed)
    expected = {n for n in SCORE_NAMES if n != "speaker_sim" or importlib.util.find_spec("resemblyzer")}
    for entry in result.results.values():
        for run in entry["runs"]:
            assert set(run["final_heldout_scores"]) == expected
    assert SCORES_HEADING in md and "| optimizer | F0 RMSE (cents) (lower is better) |" in md
    assert "- PESQ-wb (higher is better): " in md
    for figure in FIGURES:
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES) and "<table>" in page
    # stopped early: a third of 2 epochs is epoch 1; the row is recomputed here from the epoch records
    assert EARLY_HEADING in md and html.escape(EARLY_HEADING) in page
    for name, entry in result.results.items():
        at = [next(x for x in r["epoch_records"] if x["epoch"] == 1)["heldout_mel_l1"] for r in entry["runs"]]
        row = next(line for line in md.splitlines() if line.startswith(f"| {name} |") and "epoch" not in line)
        assert f"| {name} | {sum(at) / 2:.4g} ({min(at):.4g}–{max(at):.4g}) |" in md, row
    assert "| optimizer | held-out mel L1 at epoch 1: mean (min–max) |" in md


def test_every_contestant_runs_every_seed(compared):
    out, result, _, _ = compared
    for name, entry in result.results.items():
        assert [r["seed"] for r in entry["runs"]] == [1234, 1235]
        for r in entry["runs"]:
            assert (out / "runs" / name / f"seed-{r['seed']}" / "result.json").is_file()
            saved = json.loads((out / "runs" / name / f"seed-{r['seed']}" / "config.json").read_text())
            assert saved["train"]["seed"] == r["seed"]
        # another seed: other initial weights and batches, so another held-out value
        assert entry["runs"][0]["final_heldout_mel_l1"] != entry["runs"][1]["final_heldout_mel_l1"]
    setup = json.loads((out / "compare.json").read_text())
    assert setup["seeds"] == [1234, 1235] and setup["schedule"] == "paired"
    assert setup["config"]["train"]["scheduler"] == "auto"
    assert setup["config"]["train"]["warmup_epochs"] == 2


def test_results_hold_every_measurement(compared):
    _, result, _, _ = compared
    for entry in result.results.values():
        for r in entry["runs"]:
            assert r["epochs"] == 2 and len(r["epoch_records"]) == 2
            assert [x["epoch"] for x in r["epoch_records"]] == [1, 2]
            assert 0 < r["final_heldout_mel_l1"] and r["best_heldout_mel_l1"] <= r["final_heldout_mel_l1"]
            assert 0 < r["optimizer_share"] < 1 and r["wall_s"] > 0
            assert r["skipped_steps"] == 0 and r["nonfinite_steps"] == 0
        assert entry["runs"][0]["state_bytes_per_param"] == pytest.approx(
            {"AdamW": 8, "AdaBeliefV2": 12}[entry["name"]], abs=0.1
        )


def test_each_optimizer_follows_its_paired_schedule(compared):
    _, result, _, _ = compared
    adamw, v2 = (result.results[n]["runs"][0]["epoch_records"] for n in ("AdamW", "AdaBeliefV2"))
    assert result.results["AdamW"]["schedule"] == "exponential"
    assert adamw[1]["lr"] == pytest.approx(adamw[0]["lr"] * 0.999875)
    # inverse_sqrt with --warmup-epochs 2: half the peak in epoch 1, the peak in epoch 2
    assert result.results["AdaBeliefV2"]["schedule"] == "inverse_sqrt"
    assert v2[0]["lr"] == pytest.approx(adamw[0]["lr"] / 2)  # same base lr; the default warm-up is 10
    assert v2[1]["lr"] == pytest.approx(adamw[0]["lr"])


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(compared):
    out, result, stamp, events = compared
    assert (out / "runs" / "AdamW" / "seed-1234" / "result.json").stat().st_mtime_ns == stamp
    assert [i["name"] for e, i in events if e == "skip"] == ["AdamW", "AdaBeliefV2", "AdamW"]
    steps = [i["step"] for e, i in events if e == "step"]
    assert steps and steps[0] == 5  # AdaBeliefV2 seed 1235 continued after the step it was stopped at
    assert result.results["AdaBeliefV2"]["runs"][1]["steps"] == 6


def test_held_out_pieces_are_never_trained_on(compared):
    out, _, _, _ = compared
    pieces = lambda lines: {Path(line.split("|")[0]).name for line in lines if line.strip()}  # noqa: E731
    held = pieces(json.loads((out / SPLIT_FILE).read_text())["held"])
    trained = pieces((out / "train_data" / "filelist.txt").read_text().splitlines())
    assert held and trained and not held & trained
    assert len(held) + len(trained) == len((out / "data" / "filelist.txt").read_text().split())


def test_third_call_redoes_nothing(compared, voice):
    out, _, _, _ = compared
    events = []
    run_compare(voice, out, ["AdamW", "AdaBeliefV2"], progress=lambda e, **i: events.append(e), **SETUP)
    assert "step" not in events and events.count("skip") == 4
    path = out / "runs" / "AdaBeliefV2" / "seed-1235" / "result.json"
    assert json.loads(path.read_text())["steps"] == 6


def test_another_setup_in_the_same_folder_is_refused(compared, voice):
    out, _, _, _ = compared
    before = (out / "compare.json").read_text()
    with pytest.raises(ValueError, match=r"another config \(train.epochs: \d+ -> 3\)"):  # names what differs
        run_compare(voice, out, ["AdamW"], **{**SETUP, "epochs": 3})
    with pytest.raises(ValueError, match="config, schedule"):  # train.scheduler is in the config too
        run_compare(voice, out, ["AdamW"], **{**SETUP, "schedule": "same"})
    with pytest.raises(ValueError, match="config"):
        run_compare(voice, out, ["AdamW"], **{**SETUP, "warmup_epochs": 3})
    assert (out / "compare.json").read_text() == before


def test_a_failing_optimizer_does_not_stop_the_others(voice, tmp_path, monkeypatch):
    import arvc.compare.runner as runner

    real_train = runner.train

    def train(options, callbacks):
        if options.optimizer == "AdaBelief":
            raise ImportError("no such kernel")
        return real_train(options, callbacks)

    monkeypatch.setattr(runner, "train", train)
    result = run_compare(voice, tmp_path, "AdaBelief,AdamW", epochs=1, seeds=1, overrides=SMALL, max_steps=1)
    assert result.results["AdaBelief"]["runs"] == [{"seed": 1234, "error": "ImportError: no such kernel"}]
    assert result.results["AdamW"]["runs"][0]["steps"] == 1
    report = (tmp_path / "report.md").read_text()
    assert "| AdaBelief | failed: ImportError: no such kernel (seed 1234) |" in report


def test_optimizer_names():
    assert [v.name for v in resolve_optimizers("all")] == list(VARIANTS)
    # Every registry optimizer, the 8-bit switch and each spec's bf16 settings (read from the registry).
    bf16_settings = sum(len(spec.bf16_variants) for spec in OPTIMIZERS.values())
    # ... plus AdamW+EMA.
    assert len(VARIANTS) == len(OPTIMIZERS) + 2 + bf16_settings
    assert {"AdamWScheduleFree", "RAdamScheduleFree"} <= set(VARIANTS)
    assert VARIANTS["AdamW+EMA"].optimizer == "AdamW" and 0 < VARIANTS["AdamW+EMA"].ema < 1
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


def test_a_batch_larger_than_the_training_pieces_is_refused_before_any_run(voice, tmp_path):
    """20 s of audio: 8 pieces, 7 to train on. Batch 8 failed every contestant in turn, then wrote a
    report of failures with three empty figures; it is refused once, before the first run."""
    with pytest.raises(ValueError, match=r"batch size 8 is larger than the comparison's training pieces"):
        run_compare(voice, tmp_path, "AdamW,AdaBelief", epochs=1, seeds=1)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "report.md").exists()


def test_a_comparison_where_nothing_finished_ends_as_an_error(voice, tmp_path, monkeypatch):
    """The report still lists the failures, without empty figures; the CLI says error and exits 1."""
    import arvc.cli
    import arvc.cli.compare  # noqa: F401  (registers the command)
    import arvc.compare.runner as runner

    def train(options, callbacks):
        raise ImportError("no such kernel")

    monkeypatch.setattr(runner, "train", train)
    out = tmp_path / "c"
    args = ["compare", str(voice), "--optimizers", "AdamW,AdaBelief", "--seeds", "1", "--epochs", "1"]
    result = CliRunner().invoke(arvc.cli.app, [*args, "--batch-size", "2", "--out-dir", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "AdamW seed 1234 failed: ImportError: no such kernel" in text
    assert "error: no contestant finished" in text
    report = (out / voice.name / "report.md").read_text()
    assert "No figures: no contestant finished a seed." in report and "![" not in report
    assert not list((out / voice.name).glob("*.png"))
