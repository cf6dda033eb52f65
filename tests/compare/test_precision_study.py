"""The precision study runs the five configurations in lockstep and shows what Kahan summation buys."""

import pytest

from arvc.compare.precision_study import PRECISION_RUNS, plot_precision_study, precision_study


def test_short_study_orders_the_configurations(tmp_path):
    runs = precision_study(steps=600, record_every=200)
    assert [r.name for r in runs] == list(PRECISION_RUNS)
    assert all(len(r.steps) == 3 and all(map(lambda v: v == v, r.distance + r.loss)) for r in runs)
    by_name = {r.name: r for r in runs}
    assert by_name["fp32 AdamW (reference)"].distance == [0.0, 0.0, 0.0]
    kahan = by_name["bf16 + Kahan + stochastic rounding"].distance[-1]
    plain = by_name["bf16, nearest rounding, no Kahan"].distance[-1]
    assert kahan * 5 < plain, f"Kahan {kahan:.3g} vs plain bf16 {plain:.3g}"
    assert plot_precision_study(runs, tmp_path / "study.png").stat().st_size > 5000


def test_rejects_too_few_steps():
    with pytest.raises(ValueError, match="record_every"):
        precision_study(steps=10, record_every=200)


def test_compare_precision_study_flag(tmp_path):
    from typer.testing import CliRunner

    from arvc.cli import app

    result = CliRunner().invoke(
        app, ["compare", "--precision-study", "--study-steps", "400", "--out-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "precision-study" / "precision_study.png").is_file()
    assert "distance from fp32" in result.output
