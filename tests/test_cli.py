"""The CLI is thin: these tests check what a user sees and that errors exit non-zero."""

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

import arvc.cli
from arvc.cli import app
from arvc.optim import OPTIMIZERS

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich wraps to the terminal width; a wide console keeps the strings under test on one line."""
    monkeypatch.setattr(arvc.cli, "console", Console(width=200))


def test_optimizers_table_lists_every_optimizer_in_rating_order():
    result = runner.invoke(app, ["optimizers"])
    assert result.exit_code == 0, result.output
    positions = [result.output.index(name + " ") for name in OPTIMIZERS]
    assert positions == sorted(positions)
    assert "★★★★★" in result.output and "Mixed-precision" in result.output


def test_optimizers_json():
    result = runner.invoke(app, ["optimizers", "--json"])
    rows = json.loads(result.stdout)
    assert [(r["name"], r["rating"]) for r in rows] == [(s.name, s.rating) for s in OPTIMIZERS.values()]


def test_optimizer_details_json():
    result = runner.invoke(app, ["optimizers", "anyprecisionadamw", "--json"])
    assert result.exit_code == 0, result.output
    details = json.loads(result.stdout)
    assert "use_kahan_summation" in details["supported_kwargs"]
    assert details["state_bytes_per_param"]["bfloat16 params, bf16 buffers + Kahan"] <= 6.0
    assert details["fused_available"]["cpu"] is False
    adamw = json.loads(runner.invoke(app, ["optimizers", "AdamW", "--json"]).stdout)
    assert adamw["fused_available"]["cpu"] is True
    assert adamw["state_bytes_per_param"]["float32 params"] == 8.0


def test_optimizer_details_table():
    result = runner.invoke(app, ["optimizers", "AdaBeliefV2"])
    assert result.exit_code == 0, result.output
    assert "inverse_sqrt" in result.output and "arXiv:2010.07468" in result.output


def test_unknown_optimizer_is_a_clear_error():
    result = runner.invoke(app, ["optimizers", "Lion"])
    assert result.exit_code == 2
    assert "AdaBeliefV2" in result.output


def test_recommend():
    result = runner.invoke(app, ["recommend", "--epochs", "100"])
    assert result.exit_code == 0 and "RAdam" in result.output
    result = runner.invoke(app, ["recommend", "--epochs", "900", "--precision", "bf16", "--json"])
    advice = json.loads(result.stdout)
    assert advice["optimizer"] == "AnyPrecisionAdamW"
    bad = runner.invoke(app, ["recommend", "--precision", "int4"])
    assert bad.exit_code == 2
