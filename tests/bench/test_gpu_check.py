"""benchmarks/gpu_check.py runs end to end (here on the CPU, small): the script meant for a GPU machine
must not meet its first bug there, where device time is short."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
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


def test_an_existing_output_folder_is_refused_untouched(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert _module().main(["--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# A Python where arvc is not installed: the sitecustomize below drops every import path that holds an
# `arvc` package (an editable install's .pth entry) and setuptools' editable finder, unless the path came
# through PYTHONPATH — which is how gpu_check hands the checkout's src to the processes it starts. It
# also blocks the modules GPU_CHECK_BLOCK names, as on the GPU machine without soundfile or parselmouth.
_BARE_SITE = """
import os, sys
kept = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
sys.path[:] = [p for p in sys.path
               if os.path.abspath(p) in kept or not os.path.isfile(os.path.join(p, "arvc", "__init__.py"))]
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
blocked = set(filter(None, os.environ.get("GPU_CHECK_BLOCK", "").split(",")))

class _Blocked:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)

sys.meta_path.insert(0, _Blocked)
"""
KERNEL_TEST = "bit_for_bit and RAdam and maximize"  # one kernel test (in Triton's interpreter here)


def _bare(tmp_path, block=()):
    site = tmp_path / "bare-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_BARE_SITE)
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ARVC_TRITON_GPU", "TRITON_INTERPRET")
    }
    env.update(PYTHONPATH=str(site), GPU_CHECK_BLOCK=",".join(block))
    return env


def _check(tmp_path, *args, block=(), **kwargs):
    """gpu_check run from tmp_path (not the checkout) by a Python without arvc installed, with arvc's
    cache (the fused kernels' first-use verdicts) in tmp_path/arvc-cache."""
    command = [sys.executable, str(SCRIPT), "--device", "cpu", *args]
    return subprocess.run(
        command,
        cwd=tmp_path,
        env={**_bare(tmp_path, block), "ARVC_CACHE_DIR": str(tmp_path / "arvc-cache")},
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def test_the_bare_python_of_these_tests_cannot_import_arvc(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import arvc"], cwd=tmp_path, env=_bare(tmp_path),
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1 and "No module named 'arvc'" in done.stderr


def test_it_runs_from_a_checkout_without_arvc_installed_into_an_existing_empty_folder(tmp_path):
    """No pip install: the script imports the checkout's arvc and so do the processes it starts (the
    kernel tests here); a folder made beforehand (empty) is accepted; the kernel tests' output is kept
    whole; soundfile and parselmouth missing do not matter when training is left out."""
    out = tmp_path / "out"
    out.mkdir()
    done = _check(tmp_path, "--out", "out", "--skip-bench", "--skip-train", "--kernels-k", KERNEL_TEST,
                  block=("soundfile", "parselmouth", "pyworld"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["arvc"] == str(SCRIPT.parents[1] / "src" / "arvc")
    assert report["ok"] and report["finished"] and report["kernels"]["counts"]["passed"] >= 1
    assert "bench" not in report and "train" not in report
    log = (out / "kernels.log").read_text()
    assert re.search(r"test_fused_triton.py::test_.+ PASSED", log)  # each test's verdict, not only a count
    # on the CPU no Triton kernel is launched, so there is no GPU verdict: said plainly, no empty table
    checks = report["first_use_checks"]
    assert checks["verdicts"] == [] and checks["cache"] == str(tmp_path / "arvc-cache" / "fused-kernels.json")
    summary = (out / "gpu_check.md").read_text()
    assert (
        f"No first-use verdict for a CUDA GPU in {checks['cache']}: this check ran on the CPU" in summary
    ), summary
    assert "| GPU |" not in summary


GPU = "NVIDIA H100 80GB HBM3 (sm_90)"


def _verdicts(cache: Path) -> None:
    """A verdict cache as arvc.optim._fused_probe writes it on a GPU: one passed, one failed, and one of
    the Triton interpreter (tests on the CPU), which is no GPU's."""
    from arvc.optim import _fused_probe

    path = cache / "fused-kernels.json"
    for where, which, ok, why in [
        (GPU, "AdaBelief bfloat16", True, None),
        (GPU, "RAdam float32", False, "CompilationError: out of resources"),
        ("cpu (Triton interpreter)", "RAdam float32", True, None),
    ]:
        key = f"{where} | triton 3.6.0 | kernels 0123456789ab | {which} | settings 89abcdef"
        _fused_probe._remember(path, key, {"ok": ok, "why": why, "checked": "2026-12-06 05:00:00"})


def test_the_report_shows_the_first_use_verdicts_for_the_gpu(tmp_path):
    """What a GPU run shows: each GPU verdict in arvc's cache file (failed ones with why), not the
    interpreter's; those that were there before the check are marked as earlier."""
    _verdicts(tmp_path / "arvc-cache")
    done = _check(tmp_path, "--out", "out", "--skip-bench", "--skip-train", "--kernels-k", KERNEL_TEST)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["first_use_checks"]["verdicts"]
    assert [(r["where"], r["optimizer"], r["dtype"], r["ok"], r["this_check"]) for r in rows] == [
        (GPU, "AdaBelief", "bfloat16", True, False),
        (GPU, "RAdam", "float32", False, False),
    ]
    summary = (tmp_path / "out" / "gpu_check.md").read_text()
    section = summary.split("## Fused kernels' first-use checks")[1]
    assert (
        f"| {GPU} | 3.6.0 | AdaBelief | bfloat16 | 89abcdef | passed | 2026-12-06 05:00:00 | no (earlier) |"
        in (section)
    )
    assert "| RAdam | float32 | 89abcdef | FAILED: CompilationError: out of resources |" in section
    assert "interpreter" not in section and "No first-use verdict" not in section


def test_verdicts_made_during_the_check_are_marked_as_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("ARVC_CACHE_DIR", str(tmp_path))
    gpu_check = _module()
    before = gpu_check.first_use_checks("cuda", [])["verdicts"]
    assert before == []
    _verdicts(tmp_path)  # written by the bench and training parts' processes
    rows = gpu_check.first_use_checks("cuda", before)["verdicts"]
    assert [r["this_check"] for r in rows] == [True, True]
    # a GPU check in which no optimizer used a Triton kernel says so
    monkeypatch.setenv("ARVC_CACHE_DIR", str(tmp_path / "empty"))
    text = "\n".join(gpu_check._first_use_lines(gpu_check.first_use_checks("cuda", [])))
    assert "No first-use verdict for a CUDA GPU" in text and "no optimizer used a Triton kernel" in text


def test_missing_packages_are_named_before_any_work(tmp_path):
    done = _check(tmp_path, "--out", "out", "--config", "tiny", block=("soundfile", "parselmouth"))
    assert done.returncode == 2
    assert "soundfile" in done.stderr and "praat-parselmouth" in done.stderr and "--skip-train" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "nope"], "error: --config nope: 'nope' is neither a built-in config"),
        (["--optimizers", "Adam"], "error: unknown optimizer 'Adam'; valid: AdamW,"),
        (["--bench-optimizers", "nope"], "error: --bench-optimizers: unknown optimizer 'nope'"),
        (["--precisions", "fp8"], "error: unknown precision 'fp8'; valid: fp32, bf16, fp16"),
        (["--steps", "0"], "error: --steps 0: give at least 1"),
        (["--train-limit", "0"], "error: --train-limit 0: give a number of seconds above 0"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys, args, message):
    assert _module().main(["--device", "cpu", "--out", str(tmp_path / "out"), *args]) == 2
    assert capsys.readouterr().err.startswith(message)
    assert not (tmp_path / "out").exists()


def test_a_kernel_selection_that_runs_no_test_fails_the_part(tmp_path):
    done = _check(tmp_path, "--out", "out", "--skip-bench", "--skip-train", "--kernels-k", "no_such_test")
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert done.returncode == 1 and not report["ok"]
    assert report["kernels"]["error"] == "no kernel test ran (all skipped or none selected)"


def test_a_part_over_its_time_limit_loses_only_that_part_and_says_how_far_it_got(tmp_path):
    """Training cannot even start in 1 s: it is stopped and recorded as timed out, with its real size
    in the summary; the kernels part before it stays recorded."""
    done = _check(tmp_path, "--out", "out", "--skip-bench", "--kernels-k", KERNEL_TEST, "--config", "tiny",
                  "--steps", "2", "--optimizers", "AdaBelief,RAdam", "--precisions", "fp32,bf16",
                  "--train-limit", "1")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["kernels"]["ok"] and report["finished"] and not report["ok"]
    train = report["train"]
    assert not train["ok"] and train["error"] == "timed out after 1 s with 0 of 4 runs done", train
    summary = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "## Training: 2 steps of tiny" in summary and "FAILED: timed out after 1 s with 0 of 4" in summary
    assert "None" not in summary.split("## Training")[1]


def _training_parts(out: Path) -> list[int]:
    """The ids of the running training-part processes of the check writing to `out`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "--train-worker" in words and str(out) in words:
            found.append(int(cmdline.parent.name))
    return found


def _wait_until(condition, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_report_is_written_after_each_part_and_a_stopped_check_leaves_no_part_running(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), "--skip-bench",
               "--kernels-k", KERNEL_TEST, "--config", "tiny", "--steps", "50"]  # fmt: skip
    check = subprocess.Popen(command, cwd=tmp_path, env=_bare(tmp_path), stdout=subprocess.PIPE, text=True)
    try:
        for line in check.stdout:
            if line.startswith("train"):
                break
        report = json.loads((out / "gpu_check.json").read_text())
        assert report["kernels"]["ok"] and not report["finished"]
        assert report["train"] == {"ok": False, "error": report["train"]["error"], "config": "tiny",
                                   "steps": 50, "runs": []}  # fmt: skip
        assert "stopped during this part" in report["train"]["error"]
        assert _wait_until(lambda: _training_parts(out))  # the training part's process has started
        check.terminate()
        check.wait(timeout=120)
    finally:
        check.kill()
    assert _wait_until(lambda: not _training_parts(out))  # stopped with the check
    assert json.loads((out / "gpu_check.json").read_text())["kernels"]["ok"]


@pytest.mark.slow
def test_the_whole_check_runs_on_cpu(tmp_path):
    """Every part, from a checkout without arvc installed; the kernels run past their limit, which
    costs only that part: the bench and the training after it are whole."""
    out = tmp_path / "check"
    done = _check(tmp_path, "--out", str(out), "--config", "tiny", "--steps", "2", "--sizes", "1M",
                  "--bench-budget", "0.2", "--optimizers", "AdaBelief,AnyPrecisionAdamW",
                  "--precisions", "fp32,bf16", "--kernels-limit", "0.5")  # fmt: skip
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["kernels"]["error"] == "timed out after 0.5 s" and not report["ok"], report["kernels"]
    assert report["bench"]["ok"], report["bench"]
    runs = {(r["optimizer"], r["precision"]): r for r in report["train"]["runs"]}
    assert set(runs) == {(o, p) for o in ("AdaBelief", "AnyPrecisionAdamW") for p in ("fp32", "bf16")}
    for run in runs.values():
        assert run["ok"] and run["steps"] == 2 and run["finite"], run
        assert run["fused"] and all(run["fused"]), run  # the C++ kernels on CPU
        assert run["step_ms"] > 0 and run["optimizer_step_ms"] > 0
    assert report["train"]["ok"] and report["finished"]
    assert done.returncode == 1, done.stderr  # the kernels part failed
    summary = (out / "gpu_check.md").read_text()
    assert "| AdaBelief | bf16 | ok | all |" in summary and "## Targets" in summary
    assert "FAILED: timed out after 0.5 s" in summary and "## Training: 2 steps of tiny" in summary


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's parent-death signal is Linux's")
def test_a_part_dies_with_the_check_however_the_check_ends(tmp_path):
    # A SIGTERM that stopped the check while Popen was still starting the training part raised before the
    # part's handle existed: the part trained on as an orphan (seen in a full test run). The kernel now ends
    # a part when the check's process ends, here by kill -9, which no handler of the check can see.
    marker = f"arvc-part-{tmp_path.name}"
    code = (
        f"import os, pathlib, sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import gpu_check; "
        f"gpu_check.run_part([sys.executable, '-c', 'import time; time.sleep(120)', {marker!r}], "
        f"pathlib.Path({str(tmp_path / 'part.log')!r}), 300, dict(os.environ))"
    )
    check = subprocess.Popen([sys.executable, "-c", code], env=_bare(tmp_path))

    def parts() -> list[int]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if marker in cmdline.read_bytes().decode(errors="replace").split("\0"):
                    found.append(int(cmdline.parent.name))
            except OSError:
                continue
        return found

    try:
        assert _wait_until(parts, 60), "the part did not start"
        check.kill()
        check.wait(timeout=30)
        assert _wait_until(lambda: not parts(), 30), "the part outlived the check"
    finally:
        for pid in parts():
            os.kill(pid, signal.SIGKILL)
