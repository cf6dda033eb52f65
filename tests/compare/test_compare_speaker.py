"""Speaker similarity in `arvc compare`: the held-out score of each run, in the report's score table (mean
and range over seeds, ties as for mel L1, higher is better) and in scores.png."""

import importlib.util

import pytest

from arvc.audio.score import SCORE_NAMES
from arvc.compare import report, run_compare
from arvc.compare.report import SCORES_HEADING, score_table, spread
from arvc.data.demo import generate_demo_voice

needs_resemblyzer = pytest.mark.skipif(
    importlib.util.find_spec("resemblyzer") is None,
    reason="resemblyzer (the arvc[score] extra) is not installed",
)


@needs_resemblyzer
@pytest.mark.usefixtures("speaking_generator")  # tests/conftest.py: conversions that hold speech
def test_a_comparison_reports_speaker_similarity_per_contestant(tmp_path, monkeypatch):
    generate_demo_voice(tmp_path / "voice", seconds=20, sr=16000, seed=1)
    out = tmp_path / "out"
    titles = []
    real_save = report._save

    def save(fig, path):  # the figures' subplot titles, as drawn
        titles.extend((path.name, ax.get_title()) for ax in fig.axes)
        return real_save(fig, path)

    monkeypatch.setattr(report, "_save", save)
    result = run_compare(
        tmp_path / "voice", out, ["AdamW"], epochs=1, seeds=2, max_steps=1, overrides={"train.batch_size": 2}
    )
    (entry,) = result.results.values()
    for run in entry["runs"]:
        assert set(run["final_heldout_scores"]) == set(SCORE_NAMES), "the last evaluation scores all"
        assert 0 < run["final_heldout_scores"]["speaker_sim"] < 1
        assert run["epoch_records"][-1]["heldout_scores"] == run["final_heldout_scores"]
    finals = {"AdamW": spread([r["final_heldout_scores"]["speaker_sim"] for r in entry["runs"]])}
    md = (out / "report.md").read_text().splitlines()
    assert SCORES_HEADING in md
    at = next(i for i, line in enumerate(md) if line.startswith("| optimizer | F0 RMSE"))
    assert md[at].rstrip(" |").endswith("Speaker sim (higher is better)"), md[at]
    # the row's last cell: the mean (min–max) over the two seeds, recomputed here (ties: the other tests)
    mean, lo, hi = finals["AdamW"]
    assert md[at + 2].startswith("| AdamW |") and md[at + 2].rstrip(" |").endswith(
        f"{mean:.4g} ({lo:.4g}–{hi:.4g})"
    )
    assert f"- Speaker sim (higher is better): AdamW: {mean:.4g} ({lo:.4g}–{hi:.4g}), no tie" in md
    assert ("scores.png", "Speaker sim, higher is better") in titles, titles
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"


def test_speaker_similarity_ranks_higher_first_with_ties_by_overlapping_ranges():
    def entry(name, sims):
        runs = [
            {
                "seed": 1234 + k,
                "final_heldout_mel_l1": 1.5,
                "best_heldout_mel_l1": 1.5,
                "final_losses": {},
                "nonfinite_steps": 0,
                "skipped_steps": 0,
                "final_heldout_scores": {"speaker_sim": s},
            }
            for k, s in enumerate(sims)
        ]
        return {"name": name, "schedule": "exponential", "runs": runs}

    results = {
        "A": entry("A", [0.70, 0.74]),
        "B": entry("B", [0.73, 0.80]),  # overlaps A
        "C": entry("C", [0.90, 0.92]),
    }
    header, rows, (ranks,) = score_table(results)
    assert header == ["optimizer", "Speaker sim (higher is better)"]
    assert {row[0]: row[1] for row in rows} == {
        "A": "0.72 (0.7–0.74); ties B",
        "B": "0.765 (0.73–0.8); ties A",
        "C": "0.91 (0.9–0.92)",
    }
    assert ranks.startswith("Speaker sim (higher is better): C: 0.91")
    assert ranks.index("B:") < ranks.index("A:")
