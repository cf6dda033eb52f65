"""`arvc bench`: how fast each optimizer's step is, against torch's fused AdamW and third-party peers.

`run_bench(BenchConfig(...))` returns a JSON-ready dict; `report` renders it (terminal, Markdown,
targets), `plot` charts it. The CLI command lives in `arvc.bench.cli` (imported by `arvc.cli`).
"""

from arvc.bench.cases import BASELINE, Case, all_cases, select_cases
from arvc.bench.runner import DEFAULT_SIZES, BenchConfig, run_bench

__all__ = ["BASELINE", "DEFAULT_SIZES", "BenchConfig", "Case", "all_cases", "run_bench", "select_cases"]
