"""One GPU check of arvc, in one run of at most ~8 minutes on one GPU; it runs as is on a GPU machine.

Three parts, each recorded whether or not the others fail:

1. **kernels**: tests/optim/test_fused_triton.py with ARVC_TRITON_GPU=1, i.e. arvc's Triton kernels
   compiled for and run on this GPU, compared bit for bit with the fused C++ CPU kernel (without the
   variable, CI runs the same tests in Triton's interpreter).
2. **bench**: `arvc bench --device cuda` at 8.5M and 36M parameters, every optimizer's step time as a
   ratio to torch's fused CUDA AdamW measured in the same run, and each one's bytes of state per parameter.
3. **train**: a few training steps (default 20) of the v2-40k model on the demo voice through
   `arvc.train.train` — what `arvc train` runs — for every registry optimizer in fp32, bf16 and fp16:
   whether every loss was finite, the median step time, the median optimizer.step time, the peak GPU
   memory and whether the optimizers' groups took the fused path.

Writes OUT/gpu_check.json (everything) and OUT/gpu_check.md (a summary with the targets of issue 16:
every arvc optimizer's step <= 1.2x torch's fused AdamW at 36M parameters; bf16 + Kahan <= 6 B/param).
Exit status 0 when every part ran and every check held, 1 otherwise.

    python benchmarks/gpu_check.py --out gpu-check            # on a GPU machine
    python benchmarks/gpu_check.py --device cpu --config tiny --steps 2 --sizes 1M --skip-kernels  # smoke

Nothing is downloaded: the demo voice is generated, the models start from random weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("fp32", "bf16", "fp16")
RATIO_TARGET = 1.2  # every arvc optimizer's step vs torch's fused AdamW, at the largest size
KAHAN_BYTES_TARGET = 6.0  # bf16 weights + Kahan: bytes of optimizer state per parameter


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_kernels(device: str, timeout: float) -> dict:
    """The Triton kernel tests, on the GPU when `device` is CUDA (else in the interpreter)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if device.startswith("cuda"):
        env["ARVC_TRITON_GPU"] = "1"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/optim/test_fused_triton.py",
    ]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "output": _tail(str(error.stdout))}
    return {
        "ok": done.returncode == 0,
        "returncode": done.returncode,
        "on_gpu": env.get("ARVC_TRITON_GPU") == "1",
        "wall_s": round(time.perf_counter() - started, 1),
        "output": _tail(done.stdout + done.stderr),
    }


def run_bench(device: str, sizes: str, out: Path, budget: float, timeout: float) -> dict:
    """`arvc bench` as a user runs it; its JSON is kept beside this check's."""
    path = out / "bench.json"
    command = [sys.executable, "-m", "arvc", "bench", "--device", device, "--sizes", sizes]
    command += ["--budget", str(budget), "--output", str(path)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    result = {"ok": done.returncode == 0 and path.is_file(), "returncode": done.returncode}
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if not result["ok"]:
        result["output"] = _tail(done.stdout + done.stderr)
        return result
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


class _Timer:
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


def run_train(device: str, config: str, steps: int, optimizers: list[str], precisions: list[str], out: Path):
    """`steps` training steps per (optimizer, precision) on one preprocessed copy of the demo voice."""
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
            print(
                f"train {name} {precision}: {'ok' if record['ok'] else record.get('error', 'FAILED')}",
                flush=True,
            )
    return {"ok": all(r["ok"] for r in runs), "config": config, "steps": steps, "runs": runs}


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
        lines += [
            "## Kernels",
            "",
            f"test_fused_triton.py {where}: {'passed' if kernels['ok'] else 'FAILED'}",
            "",
        ]
        if not kernels["ok"]:
            lines += ["```", kernels.get("output", kernels.get("error", "")), "```", ""]
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
            lines += ["FAILED", "```", bench.get("output", bench.get("error", "")), "```"]
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
            lines.append(f"FAILED: {train['error']}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="Output folder (must not exist).")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", default="v2-40k")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", default="8.5M,36M")
    parser.add_argument("--bench-budget", type=float, default=8.0, help="Seconds per optimizer and size.")
    parser.add_argument("--optimizers", default="all", help="Registry names for the training part.")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--skip-kernels", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from arvc.optim import OPTIMIZERS

    if args.out.exists():
        print(
            f"error: {args.out} already exists; choose another --out (nothing was changed)", file=sys.stderr
        )
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: --device cuda but torch sees no GPU (torch.cuda.is_available() is False)", file=sys.stderr
        )
        return 2
    names = list(OPTIMIZERS) if args.optimizers == "all" else args.optimizers.split(",")
    precisions = args.precisions.split(",")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        print(f"error: unknown precision {unknown[0]!r}; valid: {', '.join(PRECISIONS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    started = time.perf_counter()
    cuda = args.device.startswith("cuda")
    report = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if cuda else "CPU",
        "torch": torch.__version__,
        "triton": triton_version,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    if not args.skip_kernels:
        print("kernels ...", flush=True)
        report["kernels"] = run_kernels(args.device, timeout=240)
    if not args.skip_bench:
        print("bench ...", flush=True)
        report["bench"] = run_bench(args.device, args.sizes, args.out, args.bench_budget, timeout=300)
        report["targets"] = targets(report["bench"])
    if not args.skip_train:
        print("train ...", flush=True)
        try:
            report["train"] = run_train(args.device, args.config, args.steps, names, precisions, args.out)
        except Exception as error:  # e.g. preprocessing failed: recorded, the report is still written
            report["train"] = {"ok": False, "error": f"{type(error).__name__}: {error}", "runs": []}
    report["wall_s"] = round(time.perf_counter() - started, 1)
    parts = [report[k]["ok"] for k in ("kernels", "bench", "train") if k in report]
    report["ok"] = all(parts) and all(c["ok"] for c in report.get("targets", []))
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
