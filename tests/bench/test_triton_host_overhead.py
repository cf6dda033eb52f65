"""benchmarks/triton_host_overhead.py runs end to end (tiny model, one step): the script whose numbers
docs/performance.md records for the Triton path's host work per step."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install 'arvc[gpu]' or the dev extra)")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "triton_host_overhead.py"


def test_the_host_overhead_benchmark_runs(tmp_path):
    out = tmp_path / "host.json"
    args = ["--config", "tiny", "--steps", "1", "--optimizers", "RAdam,AnyPrecisionAdamW", "--out", str(out)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"] == "tiny" and report["tensors"] > 0
    assert set(report["results"]) == {
        "RAdam",
        "RAdam +GradScaler",
        "AnyPrecisionAdamW",
        "AnyPrecisionAdamW +GradScaler",
    }
    for result in report["results"].values():
        assert result["steps"] == 1 and 0 <= result["triton_op_median_ms"] <= result["step_median_ms"]
