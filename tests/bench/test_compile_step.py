"""benchmarks/compile_step.py runs end to end, small, with Dynamo's aot_eager backend (inductor's code
generation takes minutes): the same aten kernels as eager, so the first step's losses must be equal."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compile_step.py"


@pytest.mark.slow
def test_compile_step_runs_and_aot_eager_matches_eager(tmp_path):
    out = tmp_path / "compile.json"
    args = ["--backend", "aot_eager", "--batch-size", "2", "--frames", "40", "--warmup", "2", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled" in done.stdout and "->" in done.stdout
    result = json.loads(out.read_text())
    assert result["backend"] == "aot_eager" and result["config"] == "tiny"
    assert len(result["times"]["eager"]) == len(result["times"]["compiled"]) == 1
    assert result["compile_s"] > 0 and result["ratio_compiled_over_eager"] > 0
    assert set(result["first_step_loss_rel_diff"]) >= {"loss_g", "loss_d", "loss_mel"}
    assert all(diff == 0.0 for diff in result["first_step_loss_rel_diff"].values())
