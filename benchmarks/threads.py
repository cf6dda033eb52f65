"""OpenMP wait policy for CPU training: the same generator forward+backward timed under each policy.

Each policy runs in a fresh process (OpenMP reads OMP_WAIT_POLICY once, when torch loads it), the policies
interleaved round by round so that both see the same machine. Run it on a quiet machine and on a shared
one (another training, a test suite): spin-waiting threads take cores the other process needs. Usage:

    python benchmarks/threads.py --rounds 3 --steps 8 --concurrent 2 --out benchmarks/results/threads.json

`--concurrent 2` starts two workers at once with the same policy, as two trainings (or a training and a
test suite, or two DDP ranks) sharing the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

POLICIES = ("default", "PASSIVE")  # default: libgomp spins for a while before it sleeps

WORKER = r"""
import json, sys, time
import torch
from arvc.config import load_config
from arvc.model import Synthesizer
torch.set_num_threads(int(sys.argv[1]))
cfg = load_config(sys.argv[2])
torch.manual_seed(0)
g = Synthesizer(cfg)
b, frames = 4, cfg.segment_frames * 2
args = (
    torch.randn(b, frames, cfg.data.feature_dim), torch.full((b,), frames),
    torch.randint(1, 255, (b, frames)), torch.rand(b, frames) * 200 + 100,
    torch.randn(b, cfg.data.filter_length // 2 + 1, frames), torch.full((b,), frames),
    torch.zeros(b, dtype=torch.long),
)
times = []
for _ in range(int(sys.argv[3]) + 1):  # the first step warms up
    start = time.perf_counter()
    g(*args)[0].square().mean().backward()
    times.append(time.perf_counter() - start)
print(json.dumps(times[1:]))
"""


def run(policy: str, threads: int, config: str, steps: int, concurrent: int) -> list[float]:
    """Step times of `concurrent` workers started together with the same policy (all of them, pooled)."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, "-c", WORKER, str(threads), config, str(steps)]
    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(concurrent)
    ]
    times = []
    for worker in workers:
        out, _ = worker.communicate()
        if worker.returncode:
            raise SystemExit(f"worker failed ({worker.returncode})")
        times += json.loads(out.strip().splitlines()[-1])
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--config", default="tiny")
    parser.add_argument(
        "--concurrent", type=int, default=1, help="workers at once (2: two trainings sharing the cores)"
    )
    parser.add_argument("--note", default="", help="the machine's state, e.g. 'quiet' or 'shared'")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    times: dict[str, list[float]] = {p: [] for p in POLICIES}
    for _ in range(args.rounds):
        for policy in POLICIES:
            times[policy] += run(policy, args.threads, args.config, args.steps, args.concurrent)
    summary = {
        p: {"median_s": statistics.median(t), "max_s": max(t), "min_s": min(t), "steps": len(t)}
        for p, t in times.items()
    }
    for p, s in summary.items():
        spread = f"min {s['min_s']:.3f}  max {s['max_s']:.3f}"
        print(f"{p:8s} median {s['median_s']:.3f} s  {spread}  ({s['steps']} steps)")
    ratio = summary["default"]["median_s"] / summary["PASSIVE"]["median_s"]
    print(f"default / PASSIVE median: {ratio:.2f}")
    if args.out:
        result = {"config": args.config, "threads": args.threads, "concurrent": args.concurrent}
        result.update(note=args.note, summary=summary)
        args.out.write_text(json.dumps({**result, "times": times}, indent=2))


if __name__ == "__main__":
    main()
