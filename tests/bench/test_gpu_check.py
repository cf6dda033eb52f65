"""benchmarks/gpu_check.py runs end to end (here on the CPU, small): the script meant for a GPU machine
must not meet its first bug there, where device time is short."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(key, ratio, state=8.0, path="fused", size="36M"):
    return {"size": size, "key": key, "status": "ok", "path": path, "ratio_to_baseline": ratio,
            "state_bytes_per_param": state}  # fmt: skip


def test_targets_flag_a_slow_kernel_a_fallback_and_too_much_state():
    bench = {
        "rows": [
            _row("arvc:RAdam", 5.0, size="8.5M"),  # only the largest size counts
            _row("torch:AdamW-fused", 1.0),
            _row("arvc:AdamW", 3.0),  # torch's own AdamW: not a target of arvc's kernels
            _row("arvc:RAdam", 1.1),
            _row("arvc:AdaBelief", 1.3),
            _row("arvc:AdaBeliefV2", 0.9, path="foreach"),
            _row("arvc:AnyPrecisionAdamW-bf16-kahan", 0.9, state=8.0),
        ]
    }
    checks = {c["what"].split(" ")[0]: c["ok"] for c in _module().targets(bench)}
    assert checks == {
        "arvc:RAdam": True,
        "arvc:AdaBelief": False,
        "arvc:AdaBeliefV2": False,  # fast, but not fused: the Triton path was not taken
        "arvc:AnyPrecisionAdamW-bf16-kahan": False,
    }


def test_an_existing_output_folder_is_refused_untouched(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "already exists" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_the_whole_check_runs_on_cpu(tmp_path):
    out = tmp_path / "check"
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--device", "cpu", "--config", "tiny"]
    command += ["--steps", "2", "--sizes", "1M", "--bench-budget", "0.2", "--skip-kernels"]
    command += ["--optimizers", "AdaBelief,AnyPrecisionAdamW", "--precisions", "fp32,bf16"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["bench"]["ok"], report["bench"]
    runs = {(r["optimizer"], r["precision"]): r for r in report["train"]["runs"]}
    assert set(runs) == {(o, p) for o in ("AdaBelief", "AnyPrecisionAdamW") for p in ("fp32", "bf16")}
    for run in runs.values():
        assert run["ok"] and run["steps"] == 2 and run["finite"], run
        assert run["fused"] and all(run["fused"]), run  # the C++ kernels on CPU
        assert run["step_ms"] > 0 and run["optimizer_step_ms"] > 0
    # the exit status says whether every check held (the CPU timings decide the ratio targets here)
    assert done.returncode == (0 if report["ok"] else 1), done.stderr
    summary = (out / "gpu_check.md").read_text()
    assert "| AdaBelief | bf16 | ok | all |" in summary and "## Targets" in summary
