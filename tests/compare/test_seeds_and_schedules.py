"""The fair-shoot-out rules as pure functions on made-up results: spread over seeds, ties, the schedule
setting, the warm-up warning; plus one small run that puts every contestant on one schedule."""

import pytest
from typer.testing import CliRunner

from arvc.compare.report import (
    COLUMNS,
    early_stop_table,
    ranking,
    score_table,
    spread,
    summarize,
    table_rows,
    ties,
)
from arvc.compare.runner import (
    DEFAULT_EPOCHS,
    DEFAULT_SEEDS,
    SAME_SCHEDULE,
    contestant_schedule,
    schedule_setting,
    warmup_warnings,
)
from arvc.compare.variants import resolve_optimizers
from arvc.config import apply_overrides, load_config
from arvc.data.demo import generate_demo_voice
from arvc.train.optimizers import DEFAULT_LR


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    root = tmp_path_factory.mktemp("voice")
    generate_demo_voice(root, seconds=20, sr=16000, seed=1)
    return root


def _run(seed, final, best=None, **extra):
    return {
        "seed": seed,
        "final_heldout_mel_l1": final,
        "best_heldout_mel_l1": final if best is None else best,
        "final_losses": {"loss_g": 10.0 + seed % 2, "loss_d": 2.0},
        "wall_s": 30.0 + seed % 2,
        "optimizer_share": 0.01,
        "state_bytes_per_param": 8.0,
        "nonfinite_steps": 0,
        "skipped_steps": 1,
        **extra,
    }


def _entry(name, finals, schedule="exponential"):
    return {"name": name, "schedule": schedule, "runs": [_run(1234 + k, f) for k, f in enumerate(finals)]}


RESULTS = {
    "A": _entry("A", [1.50, 1.52, 1.54]),  # [1.50, 1.54]
    "B": _entry("B", [1.53, 1.58, 1.60]),  # [1.53, 1.60]: overlaps A
    "C": _entry("C", [1.70, 1.72, 1.71]),  # [1.70, 1.72]: apart from both
    "D": _entry("D", [1.60, 1.65, 1.66]),  # [1.60, 1.66]: touches B's max
}


def test_spread_is_mean_min_max():
    assert spread([1.0, 4.0, 1.0]) == (2.0, 1.0, 4.0)
    with pytest.raises(ValueError):
        spread([])


def test_summary_of_seeds():
    s = summarize(RESULTS["A"])
    assert s["seeds"] == [1234, 1235, 1236]
    assert s["final"] == pytest.approx((1.52, 1.50, 1.54))
    assert s["loss_g"] == pytest.approx((10 + 11 + 10) / 3) and s["skipped_steps"] == 3


def test_ties_are_overlapping_seed_ranges():
    summaries = {n: summarize(e) for n, e in RESULTS.items()}
    assert ties(summaries) == {"A": ["B"], "B": ["A", "D"], "C": [], "D": ["B"]}
    lines = ranking(summaries)
    assert lines[0] == "1. A: 1.52 (1.5–1.54), ties with B"
    assert lines[2].startswith("3. D:") and lines[3] == "4. C: 1.71 (1.7–1.72), no tie"


def test_a_failed_seed_is_not_ranked():
    results = {**RESULTS, "E": _entry("E", [1.51, 1.53])}
    results["E"]["runs"].append({"seed": 1236, "error": "RuntimeError: boom"})
    summaries = {n: summarize(e) for n, e in results.items()}
    assert summaries["E"] == {"name": "E", "error": "RuntimeError: boom (seed 1236)"}
    assert "E" not in ties(summaries) and "E" not in ties(summaries)["A"]


def test_table_shows_spread_and_ties():
    rows = {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in table_rows(RESULTS)}
    assert rows["A"]["final held-out mel L1: mean (min–max)"] == "1.52 (1.5–1.54)"
    assert rows["B"]["ties with (final)"] == "A, D" and rows["C"]["ties with (final)"] == "none"
    assert rows["A"]["seeds"] == "3" and rows["A"]["schedule"] == "exponential"
    assert rows["A"]["NaN / skipped steps"] == "0 / 3"


def test_held_out_scores_are_spread_over_seeds_ranked_by_their_direction_with_ties():
    def entry(name, pesq, mcd):
        runs = [
            _run(1234 + k, 1.5, final_heldout_scores={"pesq_wb": p, "mcd_db": m, "f0_corr": float("nan")})
            for k, (p, m) in enumerate(zip(pesq, mcd, strict=True))
        ]
        return {"name": name, "schedule": "exponential", "runs": runs}

    results = {
        "A": entry("A", [2.0, 2.2], [7.0, 7.4]),
        "B": entry("B", [2.1, 2.6], [8.0, 8.2]),  # PESQ overlaps A's; MCD apart
        "C": entry("C", [3.0, 3.1], [6.0, 6.1]),
        "old": _entry("old", [1.6, 1.6]),  # written before the scores: no cell, not ranked by them
    }
    header, rows, ranks = score_table(results)
    assert header == ["optimizer", "MCD (dB) (lower is better)", "PESQ-wb (higher is better)"], (
        "no F0 corr: nan"
    )
    by_name = {row[0]: row[1:] for row in rows}
    assert by_name["A"] == ["7.2 (7–7.4)", "2.1 (2–2.2); ties B"]
    assert by_name["C"] == ["6.05 (6–6.1)", "3.05 (3–3.1)"] and by_name["old"] == ["–", "–"]
    mcd, pesq = ranks
    assert mcd.startswith("MCD (dB) (lower is better): C: 6.05") and mcd.index("A:") < mcd.index("B:")
    assert pesq.startswith("PESQ-wb (higher is better): C: 3.05") and "B: 2.35 (2.1–2.6), ties with A" in pesq
    assert score_table({"old": _entry("old", [1.6])}) == ([], [], []), "older runs: no table"


def _curve(seed, values, epochs=None):
    records = [{"epoch": k + 1, "heldout_mel_l1": v} for k, v in enumerate(values)]
    return _run(seed, values[-1], min(values), epochs=epochs or len(values), epoch_records=records)


def test_stopped_early_is_the_value_at_a_third_of_the_run_with_the_best_until_then_and_ties():
    results = {
        # 6 epochs: cut at epoch 2; "sf" is good early, "cos" only after its schedule has run
        "sf": {
            "name": "sf",
            "runs": [
                _curve(1234, [1.9, 1.2, 1.1, 1.0, 1.0, 1.0]),
                _curve(1235, [1.8, 1.3, 1.2, 1.1, 1.0, 0.9]),
            ],
        },
        "cos": {
            "name": "cos",
            "runs": [
                _curve(1234, [1.9, 1.7, 1.4, 1.0, 0.8, 0.7]),
                _curve(1235, [1.6, 1.8, 1.5, 1.0, 0.9, 0.7]),
            ],
        },
        "mid": {
            "name": "mid",
            "runs": [_curve(1234, [1.5, 1.25, 1.0, 1, 1, 1]), _curve(1235, [1.5, 1.5, 1.0, 1, 1, 1])],
        },
    }
    cut, rows, order = early_stop_table(results)
    assert cut == 2
    by_name = {row[0]: row[1:] for row in rows}
    assert by_name["sf"] == ["1.25 (1.2–1.3)", "1.25 (1.2–1.3)", "mid"]
    assert by_name["cos"] == ["1.75 (1.7–1.8)", "1.65 (1.6–1.7)", "none"], (
        "best until the cut: min of epochs 1-2"
    )
    assert by_name["mid"] == ["1.375 (1.25–1.5)", "1.375 (1.25–1.5)", "sf"]
    assert [line.split(":")[0] for line in order] == ["sf", "mid", "cos"]
    # the full-run ranking differs: that is what the view is for
    assert ranking({n: summarize(e) for n, e in results.items()})[0].startswith("1. cos:")


def test_stopped_early_leaves_out_runs_without_records_or_short_of_the_cut():
    old = _entry("old", [1.5, 1.6])  # result.json written before epoch_records existed
    short = {"name": "short", "runs": [_curve(1234, [1.9, 1.5], epochs=9)]}  # stopped at epoch 2, cut at 3
    full = {"name": "full", "runs": [_curve(1234, [1.9, 1.5, 1.4])]}
    assert early_stop_table({"old": old, "short": short}) == (None, [], [])
    cut, rows, _ = early_stop_table({"old": old, "short": short, "full": full})
    assert cut == 1 and [row[0] for row in rows] == ["full"]
    mixed = {"full": full, "longer": {"name": "longer", "runs": [_curve(1234, [1.9] * 9)]}}
    assert early_stop_table(mixed) == (None, [], []), "cut at different epochs: not like for like"


def test_schedule_setting():
    assert schedule_setting("paired") == "auto"
    assert schedule_setting("same") == SAME_SCHEDULE == "exponential"
    assert schedule_setting("Inverse-Sqrt") == "inverse_sqrt" and schedule_setting("cosine") == "cosine"
    with pytest.raises(ValueError, match="unknown schedule 'auto'.*paired, same, cosine"):
        schedule_setting("auto")
    variants = {v.name: v for v in resolve_optimizers("AdamW,AdaBelief,AdaBeliefV2")}
    assert [contestant_schedule(v, "auto") for v in variants.values()] == [
        "exponential",
        "cosine",
        "inverse_sqrt",
    ]
    assert {contestant_schedule(v, "constant") for v in variants.values()} == {"constant"}


def _cfg(**train):
    return apply_overrides(load_config("tiny"), {f"train.{k}": v for k, v in train.items()})


def test_warning_when_a_run_ends_before_its_warm_up():
    variants = resolve_optimizers("AdamW,AdaBeliefV2")
    # the old default: 5 epochs against a 10-epoch warm-up
    (warning,) = warmup_warnings(variants, _cfg(epochs=5, warmup_epochs=10), 5, None)
    assert warning.startswith("AdaBeliefV2's inverse_sqrt schedule warms up over 10 epochs (46 steps")
    assert "the run has 25 steps" in warning
    # the default warm-up fits the run: a tenth of 5 epochs is 1 (clamped)
    assert warmup_warnings(variants, _cfg(epochs=5), 5, None) == []
    # the peak is in epoch `warmup`: a 60-epoch run peaks at step 26 with warm-up 6
    assert warmup_warnings(variants, _cfg(epochs=60), 5, 26) == []
    assert len(warmup_warnings(variants, _cfg(epochs=60), 5, 25)) == 1
    # one schedule for all: every contestant on inverse_sqrt is warned, none on exponential
    assert (
        len(warmup_warnings(variants, _cfg(epochs=3, warmup_epochs=4, scheduler="inverse_sqrt"), 5, None))
        == 2
    )
    assert warmup_warnings(variants, _cfg(epochs=3, warmup_epochs=4, scheduler="exponential"), 5, None) == []


def test_cli_defaults_match_the_runner_and_a_bad_schedule_is_refused(tmp_path):
    import arvc.cli
    import arvc.cli.compare as cli_compare

    assert (cli_compare.DEFAULT_EPOCHS, cli_compare.DEFAULT_SEEDS) == (DEFAULT_EPOCHS, DEFAULT_SEEDS)
    assert DEFAULT_EPOCHS * 5 >= 300  # the demo voice has 5 steps per epoch at batch 8
    result = CliRunner().invoke(arvc.cli.app, ["compare", "--schedule", "warmup", "--out-dir", str(tmp_path)])
    assert result.exit_code == 1 and "unknown schedule 'warmup'" in result.output
    assert not any(tmp_path.iterdir())


def test_one_schedule_for_all_and_the_warm_up_warning(tmp_path, voice):
    """--schedule inverse_sqrt --warmup-epochs 3 on AdamW (paired: exponential), 4 steps of 3 per epoch."""
    from arvc.compare import run_compare

    result = run_compare(
        voice,
        tmp_path,
        "AdamW",
        epochs=2,
        seeds=1,
        schedule="inverse_sqrt",
        warmup_epochs=3,
        max_steps=4,
        overrides={"train.batch_size": 2},
    )
    (run,) = result.results["AdamW"]["runs"]
    assert run["schedule"] == "inverse_sqrt"
    lrs = [r["lr"] for r in run["epoch_records"]]
    # 1/3, then 2/3 of the peak (exponential: 1, then 0.999875; the default warm-up here: 1 epoch)
    assert lrs == pytest.approx([DEFAULT_LR / 3, 2 * DEFAULT_LR / 3])
    report = (tmp_path / "report.md").read_text()
    assert "| AdamW | inverse_sqrt | 1 |" in report and "Schedule: same: inverse_sqrt" in report
    assert "One seed: no spread" in report
    assert "Warning: AdamW's inverse_sqrt schedule warms up over 3 epochs (7 steps to its peak lr)" in report
