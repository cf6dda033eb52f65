"""Pick arvc train's default learning rate by measurement on the demo voice (tiny config, AdamW).

Trains the same model (same seed, data, config) once per learning rate for EPOCHS epochs and reports the
mean mel L1 (×45, the training loss term) of the last epoch. Usage:

    python benchmarks/lr_sweep.py --epochs 30 --out benchmarks/results/lr_sweep.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from arvc.config import apply_overrides, load_config
from arvc.data.prepare import prepare_data
from arvc.train.callbacks import Callbacks
from arvc.train.loop import TrainOptions, train


class _Recorder(Callbacks):
    def __init__(self) -> None:
        self.mel_by_epoch: dict[int, list[float]] = {}

    def on_step(self, epoch, step, losses, lr) -> None:
        self.mel_by_epoch.setdefault(epoch, []).append(losses["loss_mel"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = apply_overrides(
            load_config("tiny"), {"train.epochs": args.epochs, "train.save_every": args.epochs}
        )
        prepare_data(cfg, Path(tmp) / "shared")
        for lr in map(float, args.lrs.split(",")):
            recorder = _Recorder()
            started = time.perf_counter()
            train(
                TrainOptions(
                    run_dir=Path(tmp) / f"lr{lr:g}",
                    data_dir=Path(tmp) / "shared" / "data",
                    config=cfg,
                    optimizer="AdamW",
                    lr=lr,
                ),
                recorder,
            )
            curve = [statistics.mean(recorder.mel_by_epoch[e]) for e in sorted(recorder.mel_by_epoch)]
            row = {
                "lr": lr,
                "final_mel_l1x45": curve[-1],
                "best_mel_l1x45": min(curve),
                "curve": [round(v, 3) for v in curve],
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}))
            results.append(row)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"epochs": args.epochs, "config": "tiny", "optimizer": "AdamW", "results": results}, indent=2
            )
        )


if __name__ == "__main__":
    main()
