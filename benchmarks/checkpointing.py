"""What activation checkpointing saves and costs: peak memory and step time, off vs on, on this machine.

Each case runs in a process of its own (`--case CONFIG:BATCH:on|off`), so its peak resident memory
(`ru_maxrss`) is its own: the models and the AdamW optimizer are built, then one warm-up step (optimizer
state created) and `--steps` timed steps of `arvc.train.step.GanStep` in fp32 on a synthetic batch of pieces
of `--frames` frames. Reported per case: the peak RSS growth over the steps (activations, gradients,
optimizer state, temporaries) beside the estimate `arvc.train.memory` logs, and the median step time.
Each case runs off, then on. Usage (about 2-3 minutes on a 2-core CPU):

    python benchmarks/checkpointing.py --out benchmarks/results/checkpointing-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from rvc_step import _batch  # benchmarks/ is on the path when this script runs

from arvc.config import apply_overrides, load_config
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.model.checkpointing import set_checkpointing
from arvc.optim.denormals import flush_denormals
from arvc.train.memory import estimate_memory, probe_activations
from arvc.train.step import GanStep

MIB = 1 << 20
CASES = ("tiny:2", "v2-40k:1")


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_case(config: str, batch_size: int, on: bool, frames: int, steps: int) -> dict:
    cfg = apply_overrides(load_config(config), {"train.batch_size": batch_size})
    torch.manual_seed(0)
    net_g, net_d = Synthesizer(cfg).train(), MultiPeriodDiscriminator(cfg).train()
    set_checkpointing(net_g, net_d, on)
    optim_g = torch.optim.AdamW(net_g.parameters(), lr=1e-4, betas=(0.8, 0.99), eps=1e-9)
    optim_d = torch.optim.AdamW(net_d.parameters(), lr=1e-4, betas=(0.8, 0.99), eps=1e-9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = GanStep(
        cfg=cfg, net_g=net_g, net_d=net_d, optim_g=optim_g, optim_d=optim_d, scaler=scaler, precision="fp32"
    )
    batch = _batch(cfg, batch_size, frames)
    before = _rss()
    times = []
    with flush_denormals(True):  # as training does on a CPU
        for index in range(steps + 1):
            started = time.perf_counter()
            step(batch, index + 1)
            times.append(time.perf_counter() - started)
    peak = _rss()
    probe = probe_activations(cfg, net_g, net_d, frames, contextlib.nullcontext)  # after the peak
    estimate = estimate_memory(net_g, net_d, 8.0, probe.per_item(on), batch_size, 1, on)  # AdamW: 8 B/param
    return {
        "config": config,
        "batch_size": batch_size,
        "frames": frames,
        "checkpointing": on,
        "peak_rss_growth_mib": round((peak - before) / MIB, 1),
        "estimate_mib": round(estimate.total / MIB, 1),
        "estimate_activations_mib": round(estimate.activations / MIB, 1),
        "step_seconds": [round(t, 3) for t in times[1:]],
        "median_step_seconds": round(statistics.median(times[1:]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help="CONFIG:BATCH:on|off (one case, in this process; prints JSON)")
    parser.add_argument("--cases", default=",".join(CASES), help="CONFIG:BATCH,... (each off and on)")
    parser.add_argument("--frames", type=int, default=300, help="piece length in frames")
    parser.add_argument("--steps", type=int, default=1, help="timed steps after the warm-up step")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.case:
        config, batch, mode = args.case.split(":")
        print(json.dumps(run_case(config, int(batch), mode == "on", args.frames, args.steps)))
        return
    results = []
    for case in args.cases.split(","):
        for mode in ("off", "on"):
            command = [sys.executable, __file__, "--case", f"{case}:{mode}", "--frames", str(args.frames),
                       "--steps", str(args.steps)]  # fmt: skip
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    pairs = {}
    for result in results:
        pairs.setdefault((result["config"], result["batch_size"]), {})[result["checkpointing"]] = result
    summary = [
        {
            "config": config,
            "batch_size": batch,
            "memory_saved_mib": round(off["peak_rss_growth_mib"] - on["peak_rss_growth_mib"], 1),
            "memory_ratio_on_off": round(on["peak_rss_growth_mib"] / off["peak_rss_growth_mib"], 3),
            "time_ratio_on_off": round(on["median_step_seconds"] / off["median_step_seconds"], 3),
        }
        for (config, batch), pair in pairs.items()
        for off, on in [(pair[False], pair[True])]
    ]
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },  # fmt: skip
        "cases": results,
        "summary": summary,
    }
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
