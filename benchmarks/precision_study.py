"""Run the bf16 precision study and write its figure and numbers (docs/precision-study.md uses them).

python benchmarks/precision_study.py --steps 20000 --out benchmarks/results/precision_study
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from arvc.compare.precision_study import plot_precision_study, precision_study


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--record-every", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/precision_study"))
    args = parser.parse_args()
    started = time.perf_counter()
    runs = precision_study(steps=args.steps, record_every=args.record_every)
    seconds = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_precision_study(runs, args.out.with_suffix(".png"))
    summary = {"steps": args.steps, "seconds": round(seconds, 1), "runs": [asdict(r) for r in runs]}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    for run in runs:
        print(f"{run.name:40s} distance {run.distance[-1]:.3e}  loss {run.loss[-1]:.4e}")


if __name__ == "__main__":
    main()
