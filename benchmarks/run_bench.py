"""The standard optimizer benchmark: one command that measures, saves and regenerates the docs.

    python benchmarks/run_bench.py                      # 1M, 8.5M, 36M on CPU, every installed optimizer
    python benchmarks/run_bench.py --from-json benchmarks/results/HOST-DATE.json   # docs from a saved run

Writes benchmarks/results/<machine>-<date>.json and .png, and rewrites the generated block of
docs/performance.md (between its bench:begin/bench:end markers) unless --no-docs is given. Any other
`arvc bench` option can be passed through, e.g. --threads 1 or --sizes 8.5M.
"""

from __future__ import annotations

import argparse
import logging
import platform
import re
from datetime import date
from pathlib import Path

import torch

from arvc.bench.plot import plot_ratios
from arvc.bench.report import check_targets, load_result, save_json, update_doc
from arvc.bench.runner import BenchConfig, derive, run_bench
from arvc.bench.shapes import parse_sizes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "performance.md"


def _machine_name(device: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", platform.node() or "machine").strip("-")
    return f"{name}-{device}" if device != "cpu" else name


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1M,8.5M,36M")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--optimizers", default="all")
    parser.add_argument("--all-paths", action="store_true")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timed steps per case and size")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default: results/<machine>-<date>)"
    )
    parser.add_argument("--from-json", type=Path, default=None, help="skip measuring; render this result")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    if args.from_json is not None:
        result, out = load_result(args.from_json), args.from_json
        derive(result["rows"], result["copy_bandwidth_gbs"]["used"] * 1e9)  # today's arithmetic on old data
        save_json(result, out)
    else:
        config = BenchConfig(
            sizes=parse_sizes(args.sizes),
            dtype=getattr(torch, args.dtype),
            device=args.device,
            repeats=args.repeats,
            warmup=args.warmup,
            optimizers=args.optimizers,
            all_paths=args.all_paths,
            budget_s=args.budget,
            threads=args.threads,
        )
        result = run_bench(config)
        out = args.out or RESULTS / f"{_machine_name(args.device)}-{date.today().isoformat()}.json"
        save_json(result, out)
        logging.info("wrote %s", out)
    plot = plot_ratios(result, out.with_suffix(".png"))
    logging.info("wrote %s", plot)
    if not args.no_docs:
        update_doc(DOC, result, plot=Path("..") / plot.resolve().relative_to(ROOT))
        logging.info("updated %s", DOC)
    for check in check_targets(result):
        logging.info("%s %s: %s", "MET    " if check["met"] else "NOT MET", check["target"], check["value"])


if __name__ == "__main__":
    main()
