"""Time `optimizer.step()` for every case, interleaved so machine noise hits all of them alike.

Method, per model size:
* One set of parameters and random gradients per dtype, made once (seeded) and shared by every
  optimizer of that dtype: each optimizer keeps only its own state, so 15 optimizers fit in memory at
  36M parameters. The gradients never change; the parameters drift by lr per step, harmlessly.
* Warm-up: the first step of each optimizer is timed on its own and reported as "first step" (state
  allocation, torch.compile); `warmup - 1` more untimed steps follow.
* Timed rounds: each round runs one step of every optimizer, in a freshly shuffled order, so a burst of
  load from another process lands on all of them and no optimizer always follows the same one.
* Per case: median, quartiles, min and max of the step times; ratio to torch's fused AdamW of the same
  run; state bytes per parameter from the real buffers; memory (see `_memory`).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import torch

from arvc.bench import cases as cases_module
from arvc.bench.cases import BASELINE, Case
from arvc.bench.measure import (
    copy_bandwidth,
    describe_path,
    machine_info,
    observed_path,
    rss_bytes,
    state_bytes,
    timed,
)
from arvc.bench.shapes import BASE_CONFIG, format_size, scaled_shapes
from arvc.device import current_gpu

__all__ = ["DEFAULT_SIZES", "BenchConfig", "derive", "run_bench"]

logger = logging.getLogger(__name__)

DEFAULT_SIZES = (1_000_000, 8_500_000, 36_000_000)
SCHEMA = 1
MIN_REPEATS_UNDER_BUDGET = 3


@dataclass
class BenchConfig:
    """What to run. `budget_s` stops repeating a case once it has spent that long (after 3 steps)."""

    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    repeats: int = 20
    warmup: int = 3
    optimizers: str = "all"
    all_paths: bool = False
    budget_s: float | None = None
    threads: int | None = None
    seed: int = 0
    shapes: Callable[[int], list[tuple[int, ...]]] = scaled_shapes

    def to_json(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "shapes"}
        data["dtype"] = str(self.dtype).removeprefix("torch.")
        data["shapes"] = (
            f"RVC {BASE_CONFIG} generator, channels scaled"
            if self.shapes is scaled_shapes
            else (getattr(self.shapes, "__name__", "custom"))
        )
        return data


class _Live:
    """A case being timed: its optimizer, its row, its step times."""

    def __init__(self, case: Case, optimizer: torch.optim.Optimizer, row: dict, params: list) -> None:
        self.case, self.optimizer, self.row, self.params = case, optimizer, row, params
        self.times: list[float] = []
        self.step_peak = 0

    def spent(self) -> float:
        return sum(self.times)


def _make_params(shapes, dtype, device, generator) -> list[torch.nn.Parameter]:
    params = []
    for shape in shapes:
        weight = torch.randn(shape, generator=generator) * 0.1
        grad = torch.randn(shape, generator=generator) * 1e-2
        param = torch.nn.Parameter(weight.to(device=device, dtype=dtype))
        param.grad = grad.to(device=device, dtype=dtype)
        params.append(param)
    return params


def _base_row(case: Case, size_label: str, n_params: int, n_tensors: int) -> dict:
    return {
        "size": size_label,
        "n_params": n_params,
        "n_tensors": n_tensors,
        "key": case.key,
        "label": case.label,
        "origin": case.origin,
        "package": case.package,
        "algorithm": case.algorithm,
        "baseline": case.key == BASELINE,
        "status": "ok",
    }


def _stats(times: list[float]) -> dict:
    ms = sorted(t * 1e3 for t in times)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (ms[0],) * 3
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "q1_ms": q1,
        "q3_ms": q3,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "times_ms": [round(t, 4) for t in ms],
    }


def _start(case: Case, params: list, device: torch.device, warmup: int, row: dict) -> _Live | None:
    """Build the optimizer and run its warm-up; an exception becomes an 'error' row."""
    try:
        rss_before = rss_bytes()
        optimizer = case.build(params)
        row["first_step_ms"] = timed(optimizer.step, device) * 1e3
        path = describe_path(optimizer, case.path_hint)
        if path is None:  # left to the class: watch one warm-up step (an extra one if warmup is 1)
            path = observed_path(optimizer.step)
            warmup -= 1
        for _ in range(warmup - 1):
            optimizer.step()
        rss_after = rss_bytes()
    except Exception as error:  # a peer failing must not stop the benchmark of the others
        logger.warning("%s failed: %s: %s", case.key, type(error).__name__, error)
        row.update(status="error", error=f"{type(error).__name__}: {error}")
        return None
    row["path"] = path
    row["param_dtype"] = str(params[0].dtype).removeprefix("torch.")
    if rss_before is not None and rss_after is not None:
        row["rss_delta_warmup_bytes"] = rss_after - rss_before
    return _Live(case, optimizer, row, params)


def _timed_step(live: _Live, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    live.times.append(timed(live.optimizer.step, device))
    if device.type == "cuda":
        live.step_peak = max(live.step_peak, torch.cuda.max_memory_allocated(device) - before)


def _memory(live: _Live, params: list, device: torch.device) -> dict:
    """Footprint of training state for this optimizer: params + grads + optimizer state, plus, on CUDA,
    the largest temporary allocation seen during a step (torch.cuda.max_memory_allocated). CPU step
    temporaries are not visible to any allocator hook (tracemalloc does not see torch), so on CPU the
    number is the accounted footprint; the RSS change over the warm-up is kept in the JSON as a check."""
    tensor_bytes = sum(p.numel() * p.element_size() * 2 for p in params)  # param + grad, same dtype
    state = state_bytes(live.optimizer, exclude=params)
    total = tensor_bytes + state + live.step_peak
    method = (
        "params+grads+state+step peak (cuda.max_memory_allocated)"
        if device.type == "cuda"
        else ("params+grads+state (accounted; CPU step temporaries not measured)")
    )
    return {"state_bytes": state, "memory_bytes": total, "memory_method": method}


def _run_size(size: int, selected: list[Case], config: BenchConfig, device, progress) -> list[dict]:
    shapes = config.shapes(size)
    n_params = sum(math.prod(s) for s in shapes)
    label = format_size(size)
    generator = torch.Generator().manual_seed(config.seed)
    param_sets: dict[torch.dtype, list] = {}
    rows, live = [], []
    for case in selected:
        row = _base_row(case, label, n_params, len(shapes))
        rows.append(row)
        if not cases_module.is_installed(case.module):
            row.update(status="not installed", error=f"pip install {case.package}")
            continue
        dtype = case.param_dtype or config.dtype
        if dtype not in param_sets:
            param_sets[dtype] = _make_params(shapes, dtype, device, generator)
        progress(f"{label}: warm-up {case.key}")
        started = _start(case, param_sets[dtype], device, config.warmup, row)
        if started is not None:
            live.append(started)

    order = random.Random(config.seed)
    for round_index in range(config.repeats):
        active = [x for x in live if not _over_budget(x, config.budget_s)]
        if not active:
            break
        progress(f"{label}: round {round_index + 1}/{config.repeats}")
        order.shuffle(active)
        for item in active:
            _timed_step(item, device)

    for item in live:
        item.row.update(_stats(item.times))
        item.row.update(_memory(item, item.params, device))
        item.row["state_bytes_per_param"] = item.row["state_bytes"] / n_params
    del live, param_sets
    gc.collect()
    return rows


def _over_budget(live: _Live, budget_s: float | None) -> bool:
    return budget_s is not None and len(live.times) >= MIN_REPEATS_UNDER_BUDGET and live.spent() >= budget_s


def derive(rows: list[dict], bandwidth: float) -> None:
    """Ratios to the baseline, speed-up over the best peer of the same algorithm, bandwidth floors.

    A peer from the package an arvc row wraps (the 8-bit switch is bitsandbytes) is not its competitor.
    Pure arithmetic on the rows, so a saved result can be re-derived (benchmarks/run_bench.py --from-json).
    """
    for row in rows:
        for key in (
            "ratio_to_baseline",
            "best_peer",
            "speedup_vs_best_peer",
            "floor_bytes_per_param",
            "floor_ms",
        ):
            row.pop(key, None)
        if row["status"] != "ok":
            continue
        same_size = [r for r in rows if r["size"] == row["size"] and r["status"] == "ok"]
        baseline = next((r for r in same_size if r["baseline"]), None)
        row["ratio_to_baseline"] = row["median_ms"] / baseline["median_ms"] if baseline else None
        peers = [
            r
            for r in same_size
            if r["origin"] == "peer" and r["algorithm"] == row["algorithm"] and r["package"] != row["package"]
        ]
        if row["origin"] == "arvc" and peers:
            best = min(peers, key=lambda r: r["median_ms"])
            row["best_peer"] = best["key"]
            row["speedup_vs_best_peer"] = best["median_ms"] / row["median_ms"]
        element = torch.empty((), dtype=getattr(torch, row["param_dtype"])).element_size()
        # A perfect single pass reads param, grad and every state buffer once and writes param and state.
        floor_bytes = 3 * element + 2 * row["state_bytes_per_param"]
        row["floor_bytes_per_param"] = floor_bytes
        row["floor_ms"] = floor_bytes * row["n_params"] / bandwidth * 1e3


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark described by `config`; returns the JSON-ready result (see docs/performance.md)."""
    progress = progress or (lambda message: logger.info("%s", message))
    if config.warmup < 1:
        raise ValueError("warmup must be at least 1: the first step allocates state and is timed apart")
    if config.repeats < 1:
        raise ValueError("repeats must be at least 1")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    selected = cases_module.select_cases(cases_module.all_cases(config.all_paths), config.optimizers)
    started = time.perf_counter()
    load_at_start = machine_info(device)["load_average"]
    if load_at_start and device.type == "cpu" and load_at_start[0] > (os.cpu_count() or 1):
        logger.warning(
            "load average %.1f on %d CPUs: other processes compete for the cores, so timings will be noisy "
            "(multi-threaded kernels worst of all; --threads 1 is steadier)",
            load_at_start[0],
            os.cpu_count(),
        )
    progress("measuring copy bandwidth")
    bandwidth = [copy_bandwidth(device)]
    rows = []
    with current_gpu(device):  # --device cuda:N: kernels that launch on the current GPU launch on N
        for size in config.sizes:
            rows.extend(_run_size(size, selected, config, device, progress))
    bandwidth.append(copy_bandwidth(device))
    derive(rows, max(bandwidth))
    machine = machine_info(device)
    machine["load_average_at_start"] = load_at_start
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "config": config.to_json(),
        "copy_bandwidth_gbs": {
            "start": bandwidth[0] / 1e9,
            "end": bandwidth[1] / 1e9,
            "used": max(bandwidth) / 1e9,
        },
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }
