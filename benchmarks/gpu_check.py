"""One GPU check of arvc, in one run of at most ~8 minutes on one GPU; it runs as is from a checkout.

Three parts, each under its own time limit and each recorded whether or not the others fail:

1. **kernels** (at most 180 s): tests/optim/test_fused_triton.py with ARVC_TRITON_GPU=1, i.e. arvc's
   Triton kernels compiled for and run on this GPU, compared bit for bit with the fused C++ CPU kernel
   (without the variable, CI runs the same tests in Triton's interpreter).
2. **bench** (at most 80 s): `arvc bench --device cuda` at 8.5M and 36M parameters, every optimizer's step
   time as a ratio to torch's fused CUDA AdamW measured in the same run, and each one's bytes of state
   per parameter.
3. **train** (at most 200 s): a few training steps (default 20) of the v2-40k model on the demo voice
   through `arvc.train.train` — what `arvc train` runs — for every registry optimizer in fp32, bf16 and
   fp16: whether every loss was finite, the median step time, the median optimizer.step time, the peak GPU
   memory and whether the optimizers' groups took the fused path.

Each part runs in its own process; one that runs past its limit is stopped and recorded as timed out
(the training runs it finished are kept), and the next part starts. OUT/gpu_check.json (everything) and
OUT/gpu_check.md (a summary with the targets of issue 16: every arvc optimizer's step <= 1.2x torch's
fused AdamW at 36M parameters; bf16 + Kahan <= 6 B/param; and the fused kernels' first-use verdicts for
the GPU, from arvc's cache file) are written after every part, so a check that is killed loses only the
part it was in; OUT/kernels.log, bench.log and train.log hold each part's full output. Exit status 0
when every part ran and every check held, 1 otherwise, 2 when nothing ran (bad arguments, packages
missing: they are named before any work).

No `pip install` is needed: the checkout's `src` is put on the import path of this script and of the
processes it starts. What must be installed: torch, numpy; for the kernels pytest and triton; for the
bench typer and rich; for training soundfile (with cffi, pycparser), praat-parselmouth, scipy,
tensorboard, matplotlib and safetensors (docs/performance.md, "On a GPU", says which wheels to carry).

    python benchmarks/gpu_check.py --out gpu-check            # on a GPU machine
    python benchmarks/gpu_check.py --device cpu --config tiny --steps 2 --sizes 1M --skip-kernels  # smoke

Nothing is downloaded: the demo voice is generated, the models start from random weights.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
# This checkout's arvc, installed or not (and before any other installed copy): the check is of this code.
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from arvc.train.callbacks import Callbacks  # noqa: E402  (plain Python: no torch, nothing to install)

PARTS = ("kernels", "bench", "train")
# Seconds per part, from their sizes on one GPU: kernels = test_fused_triton.py (68 tests once issue 31's
# checks are in): one build of the C++ CPU kernels (30-60 s on a fresh machine, cached for the later
# parts) + ~40 Triton compilations (1-2 s each) + comparisons of tensors of at most 3000 elements (the
# whole file takes 42 s on the 2-core CPU machine, in the interpreter); bench = 2 sizes x ~12 optimizers x
# (3 warm-up + 20 timed steps of <= 10 ms at 36M): 30-60 s with start-up; train = the demo voice
# preprocessed once (150 s of audio at 40 kHz, pm pitch: 20-40 s) + 15 runs x (model build + 20 steps of
# batch 8): 8-12 s each. With a few seconds of start-up the limits add up to under 8 minutes.
LIMITS = {"kernels": 180.0, "bench": 80.0, "train": 200.0}
# The modules each part imports beyond torch and numpy, and the packages that provide them.
NEEDS = {
    "kernels": {"pytest": "pytest", "triton": "triton"},
    "bench": {"typer": "typer", "rich": "rich"},
    "train": {
        "soundfile": "soundfile (with cffi and pycparser)",
        "parselmouth": "praat-parselmouth",
        "scipy": "scipy",
        "tensorboard": "tensorboard",
        "matplotlib": "matplotlib",
        "safetensors": "safetensors",
    },
}
PRECISIONS = ("fp32", "bf16", "fp16")
RATIO_TARGET = 1.2  # every arvc optimizer's step vs torch's fused AdamW, at the largest size
KAHAN_BYTES_TARGET = 6.0  # bf16 weights + Kahan: bytes of optimizer state per parameter
STOPPED = "did not finish: the check was stopped during this part"


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _env(**extra: str) -> dict:
    """The environment of the processes a part starts: this checkout's src first on their import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the part's own subprocesses too
    except ProcessLookupError:
        pass
    process.wait()


def _die_with_the_check() -> None:
    """Run in a part's process before it starts (Linux): the kernel kills it when the check's process ends,
    however that ends. A SIGTERM that stops the check while Popen is still starting the part raises before
    the part's handle exists, so the kill below cannot reach it (it was left training, an orphan)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def run_part(command: list[str], log: Path, limit: float, env: dict) -> tuple[int | None, float]:
    """Run one part's process with its whole output in `log`: (exit status, or None when it ran past
    `limit` seconds and was stopped; wall seconds). Stopping the check stops the part's processes."""
    started = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_the_check if sys.platform == "linux" else None,
        )  # fmt: skip
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill(process)
            code = None
        except BaseException:  # Ctrl-C, SIGTERM (made SystemExit in main): no orphan keeps the GPU
            _kill(process)
            raise
    return code, round(time.perf_counter() - started, 1)


def _failure(code: int | None, limit: float, log: Path) -> dict:
    error = f"timed out after {limit:g} s" if code is None else f"exited with status {code}"
    return {"ok": False, "error": error, "output": _tail(log.read_text(errors="replace"))}


def run_kernels(device: str, out: Path, limit: float, select: str | None = None) -> dict:
    """The Triton kernel tests, on the GPU when `device` is CUDA (else in the interpreter). Passing
    means pytest passed *and* ran tests: a module skipped whole (no triton) or a selection of none fails."""
    env = _env()
    env.pop("TRITON_INTERPRET", None)
    if device.startswith("cuda"):
        env["ARVC_TRITON_GPU"] = "1"
    command = [sys.executable, "-m", "pytest", "-v", "-rfEs", "-p", "no:cacheprovider"]
    command += ["tests/optim/test_fused_triton.py"] + (["-k", select] if select else [])
    log = out / "kernels.log"
    code, wall = run_part(command, log, limit, env)
    result = {"on_gpu": env.get("ARVC_TRITON_GPU") == "1", "wall_s": wall, "log": log.name}
    # pytest's last line: "=== 28 passed, 1 skipped in 41.2s ===" (-v lists each test's verdict above it)
    ends = [
        line for line in log.read_text(errors="replace").splitlines() if re.search(r" in [\d.]+s\b", line)
    ]
    words = r"(\d+) (passed|failed|skipped|deselected|errors?)"
    counts = {word: int(n) for n, word in re.findall(words, ends[-1])} if ends else {}
    result["counts"] = counts
    if code != 0 or not counts.get("passed"):
        result.update(_failure(code, limit, log))
        if code in (0, 5):  # 5: pytest collected nothing
            result["error"] = "no kernel test ran (all skipped or none selected)"
        return result
    result.update(ok=True, returncode=code)
    return result


def run_bench(
    device: str, sizes: str, out: Path, budget: float, limit: float, optimizers: str = "all"
) -> dict:
    """`arvc bench` as a user runs it; its JSON is kept beside this check's."""
    path = out / "bench.json"
    command = [sys.executable, "-m", "arvc", "bench", "--device", device, "--sizes", sizes]
    command += ["--optimizers", optimizers, "--budget", str(budget), "--output", str(path)]
    log = out / "bench.log"
    code, wall = run_part(command, log, limit, _env())
    result = {"wall_s": wall, "log": log.name}
    if code != 0 or not path.is_file():
        result.update(_failure(code, limit, log))
        return result
    result.update(ok=True, returncode=code)
    rows = json.loads(path.read_text())["rows"]
    result["rows"] = [
        {
            key: row.get(key)
            for key in (
                "size",
                "key",
                "status",
                "path",
                "median_ms",
                "ratio_to_baseline",
                "state_bytes_per_param",
            )
        }
        for row in rows
    ]
    return result


class _Timer(Callbacks):
    """Training callbacks: wall time of each step and of each optimizer.step (synchronised on CUDA)."""

    def __init__(self, device: str) -> None:
        from arvc.train.timing import OptimizerStepTimer

        self.optimizer_timer = OptimizerStepTimer(device)
        self.sync = self.optimizer_timer.sync
        self.optimizer_steps = self.optimizer_timer.durations
        self.steps: list[float] = []
        self.finite = True
        self.fused: list[bool] = []
        self._last = None

    def on_optimizers(self, optim_g, optim_d) -> None:
        self.fused = [bool(g.get("fused")) for o in (optim_g, optim_d) for g in o.param_groups]
        self.optimizer_timer.attach(optim_g, optim_d)

    def on_start(self, *_) -> None:
        self.sync()
        self._last = time.perf_counter()

    def on_step(self, epoch: int, step: int, losses: dict[str, float], lr: float) -> None:
        self.sync()
        now = time.perf_counter()
        self.steps.append(now - self._last)
        self._last = now
        self.finite = self.finite and all(math.isfinite(v) for v in losses.values())

    def on_epoch(self, *_) -> None: ...


def _median_ms(values: list[float], skip: int) -> float | None:
    kept = values[skip:] or values  # the first steps compile kernels and warm the allocator
    return round(1000 * statistics.median(kept), 3) if kept else None


def _write_json(path: Path, data: dict) -> None:
    """Whole or not at all: a reader (or a check killed mid-write) never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)


def run_train(
    device: str, config: str, steps: int, optimizers: list[str], precisions: list[str], out: Path
) -> dict:
    """`steps` training steps per (optimizer, precision) on one preprocessed copy of the demo voice;
    OUT/train.json holds the runs finished so far after each one (what a stopped part keeps)."""
    import torch

    from arvc.config import apply_overrides, load_config
    from arvc.data.prepare import prepare_data
    from arvc.train.loop import TrainOptions, train

    cuda = device.startswith("cuda")
    # Enough epochs that `steps` ends the run, not the schedule; no held-out split (not measured here).
    cfg = apply_overrides(load_config(config), {"train.epochs": 1000, "train.val_fraction": 0})
    data_run = out / "data-run"
    prepare_data(cfg, data_run)
    runs = []
    total = len(optimizers) * len(precisions)
    progress = {"ok": False, "config": config, "steps": steps, "total_runs": total, "runs": runs}
    for name in optimizers:
        for precision in precisions:
            run_dir = out / "runs" / f"{name}-{precision}"
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            timer = _Timer(device)
            record = {"optimizer": name, "precision": precision}
            started = time.perf_counter()
            try:
                options = TrainOptions(
                    run_dir=run_dir,
                    data_dir=data_run / "data",
                    config=cfg,
                    optimizer=name,
                    precision=precision,
                    max_steps=steps,
                    device=device,
                )
                result = train(options, timer)
                record.update(
                    ok=timer.finite and result.steps_done == steps,
                    steps=result.steps_done,
                    finite=timer.finite,
                    fused=timer.fused,
                    final_losses={k: round(v, 4) for k, v in result.final_losses.items()},
                )
            except Exception as error:  # one failing combination must not hide the others
                record.update(ok=False, error=f"{type(error).__name__}: {error}")
            record["step_ms"] = _median_ms(timer.steps, skip=3)
            record["optimizer_step_ms"] = _median_ms(timer.optimizer_steps, skip=6)  # G and D each step
            record["peak_memory_gib"] = (
                round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None
            )
            record["wall_s"] = round(time.perf_counter() - started, 1)
            runs.append(record)
            _write_json(out / "train.json", progress)
            print(
                f"train {name} {precision}: {'ok' if record['ok'] else record.get('error', 'FAILED')}",
                flush=True,
            )
    progress["ok"] = all(r["ok"] for r in runs)
    _write_json(out / "train.json", progress)
    return progress


def run_train_part(args: argparse.Namespace, names: list[str], precisions: list[str], limit: float) -> dict:
    """The training part in its own process (this script with --train-worker), so that its time limit
    holds; the runs it finished count even when it is stopped."""
    command = [sys.executable, str(Path(__file__).resolve()), "--train-worker", "--out", str(args.out)]
    command += ["--device", args.device, "--config", args.config, "--steps", str(args.steps)]
    command += ["--optimizers", ",".join(names), "--precisions", ",".join(precisions)]
    log, path = args.out / "train.log", args.out / "train.json"
    path.unlink(missing_ok=True)
    code, wall = run_part(command, log, limit, _env())
    result = {"ok": False, "config": args.config, "steps": args.steps, "runs": []}
    result["total_runs"] = len(names) * len(precisions)
    if path.is_file():
        result.update(json.loads(path.read_text()))
    result.update(wall_s=wall, log=log.name)
    if code != 0:
        result.update(_failure(code, limit, log))
        result["error"] += f" with {len(result['runs'])} of {result['total_runs']} runs done"
    return result


def _check(what: str, value: float, target: float, ok: bool) -> dict:
    return {"what": what, "value": round(value, 3), "target": target, "ok": ok}


def targets(bench: dict) -> list[dict]:
    """Issue 16's targets, read off the bench rows of the largest size: each of arvc's own optimizers
    took the fused path and steps within RATIO_TARGET of torch's fused AdamW; bf16 + Kahan state."""
    rows = [r for r in bench.get("rows", []) if r.get("status") == "ok"]
    if not rows:
        return []
    size = rows[-1]["size"]
    checks = []
    for row in (r for r in rows if r["size"] == size and r["key"].startswith("arvc:")):
        key = row["key"]
        # arvc:AdamW is torch's fused AdamW itself (the registry builds it), the 8-bit one bitsandbytes'.
        if key == "arvc:AdamW" or "8bit" in key:
            continue
        if key.endswith("-bf16-kahan"):  # the step counters add ~0.0003 B/param
            value = row["state_bytes_per_param"]
            checks.append(
                _check(f"{key} state B/param", value, KAHAN_BYTES_TARGET, value < KAHAN_BYTES_TARGET + 0.01)
            )
            continue
        value = row["ratio_to_baseline"]
        ok = value <= RATIO_TARGET and row.get("path") == "fused"
        checks.append(
            _check(f"{key} ({row.get('path')}) step / torch fused AdamW at {size}", value, RATIO_TARGET, ok)
        )
    return checks


def _fixed(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _output(part: dict) -> list[str]:
    """A failed part's last lines of output, and where the whole of it is."""
    if part.get("ok") or not part.get("output"):
        return []
    return ["```", part["output"], "```", f"(whole output: {part['log']})", ""]


def markdown(report: dict) -> str:
    lines = [
        f"# arvc GPU check — {report['created']}",
        "",
        f"Device: {report['device_name']} "
        f"(torch {report['torch']}, triton {report['triton']}); {report['wall_s']:.0f} s.",
        "",
    ]
    kernels = report.get("kernels")
    if kernels is not None:
        where = "on the GPU" if kernels.get("on_gpu") else "in the interpreter"
        counts = ", ".join(f"{n} {word}" for word, n in kernels.get("counts", {}).items())
        verdict = "passed" if kernels["ok"] else f"FAILED: {kernels['error']}"
        lines += [
            "## Kernels",
            "",
            f"test_fused_triton.py {where}: {verdict}" + (f" ({counts})" if counts else ""),
        ]
        lines += ["", *_output(kernels)]
    bench = report.get("bench")
    if bench is not None:
        lines += ["## Bench (ratio to torch's fused AdamW, same run)", ""]
        if bench["ok"]:
            lines += [
                "| size | optimizer | path | median ms | ratio | state B/param |",
                "|---|---|---|---|---|---|",
            ]
            for r in bench["rows"]:
                ratio, state = _fixed(r.get("ratio_to_baseline")), _fixed(r.get("state_bytes_per_param"))
                lines.append(
                    f"| {r['size']} | {r['key']} | {r.get('path') or r.get('status') or ''} | "
                    f"{_fixed(r.get('median_ms'), 3)} | "
                    f"{ratio} | {state} |"
                )
        else:
            lines += [f"FAILED: {bench['error']}", "", *_output(bench)]
        lines.append("")
    checks = report.get("targets") or []
    if checks:
        lines += ["## Targets", "", "| check | value | target | |", "|---|---|---|---|"]
        lines += [
            f"| {c['what']} | {c['value']} | ≤ {c['target']} | {'ok' if c['ok'] else 'MISSED'} |"
            for c in checks
        ]
        lines.append("")
    train = report.get("train")
    if train is not None:
        lines += [f"## Training: {train.get('steps')} steps of {train.get('config')}", ""]
        lines += [
            "| optimizer | precision | ok | fused | step ms | optimizer.step ms | peak GiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in train.get("runs", []):
            fused = r.get("fused") or []
            lines.append(
                f"| {r['optimizer']} | {r['precision']} | {'ok' if r['ok'] else r.get('error', 'FAILED')} | "
                f"{'all' if fused and all(fused) else 'some' if any(fused) else 'no'} | "
                f"{_fixed(r.get('step_ms'), 1)} | "
                f"{_fixed(r.get('optimizer_step_ms'), 3)} | {_fixed(r.get('peak_memory_gib'))} |"
            )
        if "error" in train:
            lines += ["", f"FAILED: {train['error']}", "", *_output(train)]
        lines.append("")
    if "first_use_checks" in report:
        lines += _first_use_lines(report["first_use_checks"])
    return "\n".join(lines)


def first_use_checks(device: str, before: list[dict]) -> dict:
    """The fused kernels' first-use verdicts for a GPU (arvc.optim._fused_probe's cache file, written by
    the bench and training parts' processes as their optimizers first use a kernel); `before`: the file's
    verdicts when this check started, so each row says whether this check made it."""
    from arvc.optim._fused_probe import cache_path, recorded_verdicts

    earlier = {row["key"]: row for row in before}
    rows = [row for row in recorded_verdicts() if row["on_gpu"]]
    for row in rows:
        row["this_check"] = earlier.get(row["key"]) != row
    return {"cache": str(cache_path()), "device": device, "verdicts": rows}


def _first_use_lines(checks: dict) -> list[str]:
    lines = ["## Fused kernels' first-use checks", ""]
    rows = checks["verdicts"]
    if not rows:
        why = (
            "this check ran on the CPU, where the C++ kernels run and Triton's are not launched"
            if not checks["device"].startswith("cuda")
            else "no optimizer used a Triton kernel on the GPU in this check"
        )
        return lines + [f"No first-use verdict for a CUDA GPU in {checks['cache']}: {why}.", ""]
    lines += [
        f"Verdicts in {checks['cache']} (a failed one: that optimizer runs its foreach path there).",
        "",
        "| GPU | triton | optimizer | dtype | settings | verdict | checked | this check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "passed" if r["ok"] else f"FAILED: {r['why']}"
        lines.append(
            f"| {r['where']} | {r['triton']} | {r['optimizer']} | {r['dtype']} | {r['settings']} | "
            f"{verdict} | {r['checked']} | {'yes' if r['this_check'] else 'no (earlier)'} |"
        )
    return lines + [""]


def _missing(parts: list[str]) -> list[str]:
    """'package (import module: why)' for every module a part to run needs and cannot import."""
    missing = []
    for part in parts:
        for module, package in NEEDS[part].items():
            try:
                importlib.import_module(module)
            except Exception as error:  # ImportError, or a broken install failing as it loads
                missing.append(f"{package} for {part} (import {module}: {type(error).__name__}: {error})")
    return missing


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("gpu-check"), help="Output folder (new, or an empty one)."
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", default="v2-40k")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", default="8.5M,36M")
    parser.add_argument("--bench-budget", type=float, default=8.0, help="Seconds per optimizer and size.")
    parser.add_argument(
        "--bench-optimizers",
        default="all",
        help="arvc bench --optimizers (e.g. arvc,torch: leaves out peers such as torchao, slow to compile).",
    )
    parser.add_argument("--optimizers", default="all", help="Registry names for the training part.")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--kernels-k", help="Only the kernel tests that match this pytest -k expression.")
    for part in PARTS:
        parser.add_argument(f"--skip-{part}", action="store_true")
        parser.add_argument(
            f"--{part}-limit",
            type=float,
            default=LIMITS[part],
            help=f"Seconds the {part} part may take before it is stopped (default {LIMITS[part]:.0f}).",
        )
    parser.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # the parts' processes run in the checkout, not in the caller's folder

    if args.train_worker:  # the training part's own process (run_train_part starts it)
        names, precisions = args.optimizers.split(","), args.precisions.split(",")
        run_train(args.device, args.config, args.steps, names, precisions, args.out)
        return 0  # done: each run's own record says whether it held

    import torch

    from arvc.config import load_config
    from arvc.optim import OPTIMIZERS

    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        return _refuse(f"{args.out} already exists and is not an empty folder; choose another --out "
                       "(nothing was changed)")  # fmt: skip
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _refuse("--device cuda but torch sees no GPU (torch.cuda.is_available() is False)")
    names = list(OPTIMIZERS) if args.optimizers == "all" else args.optimizers.split(",")
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        return _refuse(f"unknown optimizer {unknown[0]!r}; valid: {', '.join(OPTIMIZERS)}")
    precisions = args.precisions.split(",")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        return _refuse(f"unknown precision {unknown[0]!r}; valid: {', '.join(PRECISIONS)}")
    if args.steps < 1:
        return _refuse(f"--steps {args.steps}: give at least 1")
    for part in PARTS:
        limit = getattr(args, f"{part}_limit")
        if not limit > 0:
            return _refuse(f"--{part}-limit {limit:g}: give a number of seconds above 0")
    parts = [part for part in PARTS if not getattr(args, f"skip_{part}")]
    if "bench" in parts:
        from arvc.bench.cases import all_cases, select_cases

        try:
            select_cases(all_cases(), args.bench_optimizers)
        except ValueError as error:
            return _refuse(f"--bench-optimizers: {error}")
    if "train" in parts:
        try:
            load_config(args.config)
        except Exception as error:
            return _refuse(f"--config {args.config}: {error}")
    missing = _missing(parts)
    if missing:
        skips = " ".join(f"--skip-{part}" for part in PARTS if any(f" for {part} (" in m for m in missing))
        return _refuse(
            "missing packages (nothing was run):\n  " + "\n  ".join(missing) + "\ninstall them (docs/"
            f'performance.md, "On a GPU", says which wheels to carry) or leave their part out: {skips}'
        )
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stops the running part too
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import arvc
    from arvc.optim._fused_probe import recorded_verdicts

    started = time.perf_counter()
    cuda = args.device.startswith("cuda")
    verdicts_before = recorded_verdicts()
    report = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if cuda else "CPU",
        "torch": torch.__version__,
        "triton": triton_version,
        "arvc": str(Path(arvc.__file__).parent),
        "argv": sys.argv[1:] if argv is None else argv,
        "limits_s": {part: getattr(args, f"{part}_limit") for part in parts},
        "finished": False,
    }

    def save() -> None:
        report["wall_s"] = round(time.perf_counter() - started, 1)
        done = [report[part] for part in PARTS if part in report]
        report["ok"] = all(r["ok"] for r in done) and all(c["ok"] for c in report.get("targets", []))
        report["first_use_checks"] = first_use_checks(args.device, verdicts_before)
        _write_json(args.out / "gpu_check.json", report)
        (args.out / "gpu_check.md").write_text(markdown(report))

    for part in parts:
        limit = getattr(args, f"{part}_limit")
        report[part] = {"ok": False, "error": STOPPED}
        if part == "train":
            report[part].update(config=args.config, steps=args.steps, runs=[])
        save()
        print(f"{part} (at most {limit:g} s) ...", flush=True)
        if part == "kernels":
            report[part] = run_kernels(args.device, args.out, limit, args.kernels_k)
        elif part == "bench":
            report[part] = run_bench(
                args.device, args.sizes, args.out, args.bench_budget, limit, args.bench_optimizers
            )
            report["targets"] = targets(report[part])
        else:
            report[part] = run_train_part(args, names, precisions, limit)
        save()
    report["finished"] = True
    save()
    print(markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
