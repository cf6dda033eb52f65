"""`arvc bench` on tiny inputs: rows, ratios, missing peers, outputs. Never asserts a timing."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from arvc.bench import BASELINE, BenchConfig, all_cases, cases, run_bench, select_cases
from arvc.bench.measure import describe_path, observed_path, state_bytes
from arvc.bench.plot import plot_ratios
from arvc.bench.report import DOC_BEGIN, DOC_END, check_targets, load_result, markdown, save_json, update_doc
from arvc.bench.shapes import parse_size, scaled_shapes

FORCED_MISSING = {"torchao", "optimi"}  # torchao would also spend minutes compiling


def _tiny_shapes(size: int) -> list[tuple[int, ...]]:
    return [(16, 8, 3), (16,), (16, 1, 1), (32, 16)]


@pytest.fixture(scope="module")
def result():
    """One tiny run shared by the tests below, with two peers simulated as not installed."""
    real = cases.is_installed
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cases, "is_installed", lambda module: module not in FORCED_MISSING and real(module))
        config = BenchConfig(sizes=[1000], repeats=2, warmup=1, shapes=_tiny_shapes, threads=1)
        return run_bench(config, progress=lambda message: None)


def test_a_row_per_optimizer_with_finite_numbers(result):
    rows = result["rows"]
    assert [r["key"] for r in rows] == [c.key for c in all_cases()]
    assert all(r["n_params"] == 16 * 8 * 3 + 16 + 16 + 32 * 16 for r in rows)
    for row in rows:
        assert row["status"] in ("ok", "not installed"), row
        if row["status"] != "ok":
            continue
        assert row["n"] == 2
        for key in ("median_ms", "q1_ms", "q3_ms", "first_step_ms", "ratio_to_baseline", "floor_ms"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["key"], key)
        assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["path"]
        assert row["state_bytes_per_param"] > 0
    arvc_rows = [r for r in rows if r["origin"] == "arvc" and r["package"] == "arvc"]
    assert len(arvc_rows) >= 6 and all(r["status"] == "ok" for r in arvc_rows)


def test_schedule_free_rows_beside_the_reference_package(result):
    # From the registry (arvc's) and the bench extra (schedulefree's own, a peer of the same algorithm).
    rows = {r["key"]: r for r in result["rows"]}
    for name in ("AdamWScheduleFree", "RAdamScheduleFree"):
        ours, peer = rows[f"arvc:{name}"], rows[f"schedulefree:{name}"]
        assert ours["algorithm"] == peer["algorithm"] == name
        assert ours["status"] == "ok" and ours["path"] == "fused"  # the registry's default on a float32 CPU
        assert ours["state_bytes_per_param"] == pytest.approx(8.0, abs=0.1)  # z and exp_avg_sq
        if peer["status"] == "ok":  # (the bench extra installed)
            assert peer["state_bytes_per_param"] == pytest.approx(8.0, abs=0.1)


def test_ratios_are_against_fused_adamw_of_the_same_run(result):
    rows = {r["key"]: r for r in result["rows"]}
    baseline = rows[BASELINE]
    assert baseline["path"] == "fused" and baseline["ratio_to_baseline"] == 1.0
    for row in rows.values():
        if row["status"] == "ok":
            assert row["ratio_to_baseline"] == pytest.approx(row["median_ms"] / baseline["median_ms"])
    kahan = rows["arvc:AnyPrecisionAdamW-bf16-kahan"]
    assert kahan["param_dtype"] == "bfloat16" and kahan["state_bytes_per_param"] == pytest.approx(6, abs=0.1)


def test_missing_peers_are_reported_not_raised(result):
    missing = [r for r in result["rows"] if r["key"].split(":")[0] in FORCED_MISSING]
    assert missing and all(r["status"] == "not installed" for r in missing)
    assert all(r["error"].startswith("pip install ") for r in missing)


def test_json_plot_and_docs_are_written(result, tmp_path):
    path = tmp_path / "results" / "run.json"
    save_json(result, path)
    assert load_result(path) == json.loads(json.dumps(result))
    png = plot_ratios(result, tmp_path / "ratios.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    doc = tmp_path / "performance.md"
    doc.write_text(f"# intro\n\n{DOC_BEGIN}\nold\n{DOC_END}\n\nkept\n")
    update_doc(doc, result, plot="ratios.png")
    text = doc.read_text()
    assert "old" not in text and "kept" in text and "torch AdamW (fused)" in text
    assert "8.5M" in markdown(result) and check_targets(result) == []  # no 8.5M size in this run


def test_selection_keeps_the_baseline_and_rejects_unknown_names():
    every = all_cases()
    chosen = select_cases(every, "arvc:AdaBelief")
    assert [c.key for c in chosen] == [BASELINE, "arvc:AdaBelief"]
    assert {c.origin for c in select_cases(every, "peers")} == {"torch", "peer"}
    with pytest.raises(ValueError, match="unknown optimizer"):
        select_cases(every, "Adagrad")


def test_paths_are_read_from_the_optimizer():
    params = [torch.nn.Parameter(torch.zeros(4)) for _ in range(2)]
    for p in params:
        p.grad = torch.ones(4)
    assert describe_path(torch.optim.AdamW(params, fused=True)) == "fused"
    assert describe_path(torch.optim.AdamW(params, foreach=True)) == "foreach"
    assert describe_path(torch.optim.SGD(params, lr=0.1), hint="custom") == "custom"
    assert observed_path(torch.optim.AdamW(params, foreach=False).step) == "for-loop (observed)"
    assert observed_path(torch.optim.AdamW(params, foreach=True).step) == "foreach (observed)"


def test_state_bytes_count_8bit_state_and_shared_storage_once():
    bnb = pytest.importorskip("bitsandbytes")
    params = [torch.nn.Parameter(torch.zeros(8192)) for _ in range(2)]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    optimizer = bnb.optim.AdamW8bit(params, lr=1e-3)
    optimizer.step()
    per_param = state_bytes(optimizer, exclude=params) / 16384
    assert 2.0 < per_param < 2.2


def test_sizes_keep_every_rvc_tensor():
    assert parse_size("8.5M") == 8_500_000 and parse_size("500k") == 500_000
    with pytest.raises(ValueError):
        parse_size("big")
    shapes = scaled_shapes(8_500_000)
    assert len(shapes) == 560
    assert abs(sum(math.prod(s) for s in shapes) / 8_500_000 - 1) < 0.05


def test_cli_bench_json(tmp_path):
    import arvc.cli.bench  # noqa: F401  (registers the command, as arvc.cli does)
    from arvc.cli import app

    runner = CliRunner()
    plot = tmp_path / "out.png"
    args = ["bench", "--sizes", "50k", "--repeats", "1", "--warmup", "1", "--optimizers", "torch"]
    outcome = runner.invoke(app, [*args, "--threads", "1", "--json", "--plot", str(plot)])
    assert outcome.exit_code == 0, outcome.output
    data = json.loads(outcome.stdout)
    assert [r["key"] for r in data["rows"]] == [
        "torch:AdamW-fused",
        "torch:AdamW-foreach",
        "torch:RAdam-foreach",
    ]
    assert plot.is_file()
    bad = runner.invoke(app, ["bench", "--optimizers", "Adagrad"])
    assert bad.exit_code != 0 and "unknown optimizer" in bad.output


def test_arvc_cases_come_from_the_registry_specs(monkeypatch):
    """A spec's algorithm and bf16-weights mode are what the benchmark times and compares it with: a
    spec that gains a bf16 mode gets its bf16 case, named as `arvc compare` names that setting."""
    import dataclasses
    from types import MappingProxyType

    from arvc.optim import OPTIMIZERS

    mode = MappingProxyType({"foreach": False})
    specs = {
        name: dataclasses.replace(spec, bf16_weights_kwargs=None, bf16_variants=MappingProxyType({}))
        for name, spec in OPTIMIZERS.items()
    }
    specs["AdaBelief"] = dataclasses.replace(
        OPTIMIZERS["AdaBelief"],
        algorithm="Belief",
        bf16_weights_kwargs=mode,
        bf16_variants=MappingProxyType({"loop": mode}),
    )
    monkeypatch.setattr(cases, "OPTIMIZERS", MappingProxyType(specs))
    arvc = {c.key: c for c in all_cases() if c.origin == "arvc"}
    assert arvc["arvc:AdaBelief"].algorithm == "Belief"
    bf16 = [c for c in arvc.values() if c.param_dtype == torch.bfloat16]
    assert [(c.key, c.label, c.algorithm) for c in bf16] == [
        ("arvc:AdaBelief-bf16-loop", "arvc AdaBelief bf16 + Loop", "Belief bf16")
    ]
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    assert bf16[0].build([param]).defaults["foreach"] is False
