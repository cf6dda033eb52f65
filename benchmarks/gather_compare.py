"""Gather the finished runs of `arvc compare` folders that share one setup into one comparison folder, and
write its report. This is how a comparison too long for one sitting is made: split over processes (each
its own `--name` and a share of the contestants, the same `--seed`/`--seeds`), over sessions or machines,
then reported as one — with the same arvc commit and thread count for every run, so that every run is
trained as a single `arvc compare` trains it: with 2 threads (the tests' setting) gathered halves have
matched the one call bit for bit (tests/bench/test_gather_compare.py); with one thread per process a run has
differed from the one call's in the last bits of its losses (CPU kernels' sums can depend on memory
layout), a float-rounding difference of the kind a GAN's steps magnify as they magnify any other.

Only what the report reads is gathered: `compare.json` (the setup, which must match; the seeds and warnings
are merged), and of each finished run (an interrupted run has no result.json and is left out)
`runs/NAME/seed-K/result.json` and its `metrics.csv` (the training-loss figure's per-step losses; copied
into a run gathered earlier without it). A run found twice must have trained to the same result (its
losses and held-out scores), or nothing is written: gather copies of one training, not two trainings of
the same run (with one thread, two processes have trained one run to results that differ in the last
bits; tests/bench/test_gather_compare.py). The gathered folder is itself a comparison folder:
`arvc compare --name` on it skips its runs, so copying one back is how an unfinished comparison continues.
Usage:

    python benchmarks/gather_compare.py DEST SOURCE [SOURCE ...] [--report]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from arvc.compare.runner import RESULT_FILE, run_folder
from arvc.data.outputs import COMPARE_SETUP, RunFolder

# compare.json's keys that record what a comparison did rather than what it is (not compared, merged)
MERGED = ("seeds", "warnings")
# result.json's keys that say what a run trained to (its times depend on the machine's load)
OUTCOME = ("final_losses", "final_heldout_mel_l1", "best_heldout_mel_l1", "final_heldout_scores")


def _setup(folder: Path) -> dict:
    path = folder / COMPARE_SETUP
    if not path.is_file():
        raise SystemExit(f"error: {folder} is not a comparison folder (no {COMPARE_SETUP})")
    return json.loads(path.read_text())


def _without(record: dict, keys) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def _finished(folder: Path) -> dict[tuple[str, int], Path]:
    runs = folder / "runs"
    found = {}
    for result in sorted(runs.glob(f"*/seed-*/{RESULT_FILE}")) if runs.is_dir() else []:
        found[(result.parent.parent.name, int(result.parent.name.removeprefix("seed-")))] = result
    return found


def gather(dest: Path, sources: list[Path]) -> list[tuple[str, int]]:
    """Copy every finished run of `sources` into `dest` (made if missing); returns the runs copied."""
    folders = ([dest] if (dest / COMPARE_SETUP).is_file() else []) + sources
    setups = [_setup(folder) for folder in folders]
    first = _without(setups[0], MERGED)
    for folder, setup in zip(folders, setups, strict=True):
        changed = sorted(k for k in set(first) | set(_without(setup, MERGED)) if first.get(k) != setup.get(k))
        if changed:
            raise SystemExit(
                f"error: {folder} has another {', '.join(changed)} than {folders[0]}; nothing written"
            )
    have = _finished(dest)
    plan, losses = {}, {}
    for source in sources:
        for key, path in _finished(source).items():
            new = json.loads(path.read_text())
            old = json.loads((have.get(key) or plan.get(key) or path).read_text())
            if any(old.get(k) != new.get(k) for k in OUTCOME):
                raise SystemExit(f"error: {key[0]} seed {key[1]} differs between {path} and another copy")
            metrics = _metrics_of(path)
            if key not in have:  # a copy with its losses rather than one without
                if key not in plan or (metrics.is_file() and not _metrics_of(plan[key]).is_file()):
                    plan[key] = path
            elif metrics.is_file() and not RunFolder(run_folder(dest, *key)).metrics.is_file():
                losses.setdefault(key, metrics)  # a run gathered earlier without them
    losses.update({key: _metrics_of(path) for key, path in plan.items()})
    merged = dict(setups[0])
    for key in MERGED:
        values = [v for setup in setups for v in setup.get(key, [])]
        merged[key] = sorted(set(values)) if key == "seeds" else list(dict.fromkeys(values))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / COMPARE_SETUP).write_text(json.dumps(merged, indent=2))
    for (name, seed), path in sorted(plan.items()):
        target = run_folder(dest, name, seed) / RESULT_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    for key, path in sorted(losses.items()):
        target = RunFolder(run_folder(dest, *key)).metrics
        if path.is_file():
            shutil.copyfile(path, target)
        else:  # (an interrupted attempt's losses in dest are not this run's)
            target.unlink(missing_ok=True)
    return sorted(plan)


def _metrics_of(result: Path) -> Path:
    return RunFolder(result.parent).metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("sources", type=Path, nargs="+")
    parser.add_argument("--report", action="store_true", help="write DEST/report.md (+ .html, figures)")
    args = parser.parse_args(argv)
    copied = gather(args.dest, args.sources)
    print(f"{len(copied)} runs gathered into {args.dest}: " + ", ".join(f"{n} seed {s}" for n, s in copied))
    runs = _finished(args.dest).values()
    with_losses = sum(_metrics_of(result).is_file() for result in runs)
    print(f"{args.dest} holds {len(runs)} finished runs, {with_losses} with their losses (metrics.csv)")
    if args.report:
        from arvc.compare.report import collect_results, write_report

        md, _ = write_report(args.dest, collect_results(args.dest))
        print(f"report: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
