"""Host time per optimizer step on arvc's Triton path, with the kernel launch itself stubbed out.

What a GPU step costs before the kernel runs is Python work on the host: checking 560 tensors, building
the pointer and scalar tables and copying them to the GPU, reading GradScaler's scale and overflow flag.
No GPU is needed to measure it: the parameters here are CPU tensors that the Triton path takes for CUDA
ones (as the tests do), every Triton launch returns at once (`JITFunction.run` is stubbed), and what is
timed is `optimizer.step()` as a training loop calls it, on v2-40k's generator (560 tensors, 36.5M
parameters), with and without GradScaler's scale handed to the step, and, within it, the time spent
inside the Triton op (the path's own host work; the rest is the optimizer's step around it, the same on
every path). Copies to a GPU and the host
syncs they cause cost nothing here, so a GPU adds to the "before" numbers, not to the "after" ones.
Times are the process's CPU time (`time.process_time`, one thread), not wall time: on a shared machine
the wall time of a step is mostly waiting for a core, which is not the step's own work.

    python benchmarks/triton_host_overhead.py --out benchmarks/results/triton_host_overhead-after.json
    PYTHONPATH=OLD/src python benchmarks/triton_host_overhead.py --out ...-before.json   # another arvc

The arvc it measures is whichever `import arvc` finds (its path is recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be JIT functions, whose launch is stubbed


def _stub_launches() -> None:
    from triton.runtime.jit import JITFunction

    JITFunction.run = lambda self, *args, **kwargs: None


def _triton_path() -> None:
    """CPU tensors take the Triton path; no first-use check (it runs once per GPU, not per step)."""
    from arvc.optim import _fused

    _fused._uses_triton = lambda device: True
    try:
        from arvc.optim import _fused_probe
    except ImportError:  # an arvc from before the check
        return
    _fused_probe.first_use_failure = lambda *args: None


_inside: list[float] = []  # seconds spent inside the Triton op (the path's own host work), per call


def _time_ops() -> None:
    """Time each call of the Triton ops themselves (what the optimizer's own step adds is the rest)."""
    import arvc.optim._fused_triton as ops

    for name in ("adabelief_", "any_precision_adamw_", "radam_"):
        op = getattr(ops, name)

        def timed(*args, _op=op, **kwargs):
            start = time.process_time()
            try:
                return _op(*args, **kwargs)
            finally:
                _inside.append(time.process_time() - start)

        setattr(ops, name, timed)


def measure(name: str, shapes, steps: int, amp: bool) -> tuple[list[float], list[float]]:
    from arvc.optim import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = build_optimizer(name, params, lr=1e-4)
    assert all(group["fused"] for group in optimizer.param_groups), f"{name} did not take the fused path"
    times, inside = [], []
    for _ in range(steps + 2):  # two to warm up
        _inside.clear()
        if amp:  # what GradScaler hands a fused optimizer each step
            optimizer.grad_scale = torch.tensor(65536.0)
            optimizer.found_inf = torch.tensor(0.0)
        start = time.process_time()
        optimizer.step()
        times.append(time.process_time() - start)
        inside.append(sum(_inside))
        if amp:
            del optimizer.grad_scale, optimizer.found_inf
    return times[2:], inside[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizers", default="AdaBelief,AdaBeliefV2,RAdam,AnyPrecisionAdamW")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config", default="v2-40k", help="whose generator's tensors (v2-40k: 560, 36.5M)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _stub_launches()
    _triton_path()
    _time_ops()
    import arvc
    from arvc.bench.shapes import rvc_shapes

    shapes = rvc_shapes(args.config)
    results = {}
    for name in args.optimizers.split(","):
        for amp in (False, True):
            times, inside = measure(name, shapes, args.steps, amp)
            label = f"{name}{' +GradScaler' if amp else ''}"
            results[label] = {
                "step_median_ms": round(statistics.median(times) * 1e3, 3),
                "step_min_ms": round(min(times) * 1e3, 3),
                "triton_op_median_ms": round(statistics.median(inside) * 1e3, 3),
                "triton_op_min_ms": round(min(inside) * 1e3, 3),
                "steps": len(times),
            }
            r = results[label]
            print(
                f"{label:30s} step: median {r['step_median_ms']:7.2f} ms, min {r['step_min_ms']:7.2f} ms;"
                f"  inside the Triton op: median {r['triton_op_median_ms']:7.2f} ms,"
                f" min {r['triton_op_min_ms']:7.2f} ms"
            )
    report = {
        "what": "host CPU time per optimizer.step() on the Triton path, kernel launches stubbed (no GPU)",
        "clock": "time.process_time (CPU time of this process, 1 thread)",
        "arvc": str(Path(arvc.__file__).parent),
        "config": args.config,
        "tensors": len(shapes),
        "parameters": sum(torch.Size(s).numel() for s in shapes),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "threads": args.threads,
        "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
