"""Runs `arvc.train.loop.train` for the distributed tests, once per spec, under torchrun or alone.

    python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_worker.py SPECS.json

(Started without torchrun it trains in this one process.) SPECS.json is a list of
{"options": {...TrainOptions...}, "overrides": {...}, "result": PATH, ...}; each rank writes
PATH.rank{R}.json with the outcome (or the error) and goes on with the next spec. Test-only extras:
"noise_seed_offset" (shift the per-item noise keys: the control run), "fail_save" (rank 0's checkpoint
write raises OSError), "pid_dir" (each rank writes its pid there, for the signal test),
"record_evaluated" (each rank saves G's parameters, flattened, each time the run evaluates them:
PATH.rank{R}.evaluated.pt), "stop_on_rank" (that rank's TrainOptions.stop, the web UI's Stop, is set from
the start: it asks to stop after the first step).
"""

import contextlib
import json
import os
import sys
import threading
import traceback
from pathlib import Path

import torch

import arvc.train.loop as loop
import arvc.train.step as step
from arvc.config import apply_overrides, load_config
from arvc.model.noise import per_item_noise
from arvc.train.distributed import process_group


def run(spec: dict) -> dict:
    rank = int(os.environ.get("RANK", "0"))
    options = dict(spec["options"])
    for key in ("run_dir", "data_dir", "resume"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    config = apply_overrides(load_config("tiny"), spec.get("overrides", {}))
    offset = spec.get("noise_seed_offset", 0)
    step.per_item_noise = lambda seed, n, items: per_item_noise(seed + offset, n, items)
    if spec.get("fail_save") and rank == 0:

        def failing_save(state, path):
            raise OSError(28, "No space left on device (simulated)")

        loop.atomic_save = failing_save
    if spec.get("pid_dir"):
        Path(spec["pid_dir"], f"rank{rank}.pid").write_text(str(os.getpid()))
    evaluated = []
    if spec.get("record_evaluated"):
        plain = loop._evaluated

        @contextlib.contextmanager
        def recording(run):
            with plain(run):
                evaluated.append(torch.cat([p.detach().flatten().clone() for p in run.net_g.parameters()]))
                yield

        loop._evaluated = recording
    if spec.get("stop_on_rank") == rank:
        options["stop"] = threading.Event()
        options["stop"].set()
    try:
        result = loop.train(loop.TrainOptions(config=config, **options))
    finally:
        if spec.get("record_evaluated"):
            loop._evaluated = plain
            torch.save(evaluated, f"{spec['result']}.rank{rank}.evaluated.pt")
    return {
        "steps_done": result.steps_done,
        "stopped_by": result.stopped_by,
        "losses": result.final_losses,
        "last_checkpoint": str(result.last_checkpoint),
    }


def main() -> None:
    rank = os.environ.get("RANK", "0")
    with process_group("cpu"):  # one group for all specs (train() joins it rather than starting another)
        for spec in json.loads(Path(sys.argv[1]).read_text()):
            try:
                outcome = run(spec)
            except Exception as error:  # reported to the test, which decides
                outcome = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
            Path(f"{spec['result']}.rank{rank}.json").write_text(json.dumps(outcome))


if __name__ == "__main__":
    main()
