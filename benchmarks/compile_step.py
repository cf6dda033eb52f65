"""What `arvc train --compile` buys: arvc's training step with both networks under torch.compile (inductor,
as `--compile` does it) beside the same step eager, on the same synthetic batch, in one process.

The two steps start from the same weights; the compiled one's first steps include compiling (Dynamo traces
G, D, and D frozen for G's phase, which guards on requires_grad and compiles again), reported as
*compile s*. Then the two alternate round by round so that both see the same machine; the result is the
ratio of median step times, and how far the first step's losses differ (inductor reassociates floats).
Usage:

    python benchmarks/compile_step.py --config tiny --batch-size 4 --rounds 10 \
        --out benchmarks/results/compile-tiny.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from rvc_step import _batch  # benchmarks/ is on the path when this script runs

from arvc.config import load_config
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.optim import build_optimizer
from arvc.train.step import GanStep


def make_step(cfg, compiled: bool, backend: str = "inductor"):
    torch.manual_seed(cfg.train.seed)
    net_g, net_d = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    hp = {"lr": 1e-3, "betas": tuple(cfg.train.betas), "eps": cfg.train.eps}
    optim_g = build_optimizer("AdamW", net_g.parameters(), weight_decay=cfg.train.weight_decay, **hp)
    optim_d = build_optimizer("AdamW", net_d.parameters(), weight_decay=cfg.train.weight_decay, **hp)
    g_forward, d_forward = net_g, net_d
    if compiled:
        g_forward, d_forward = (torch.compile(net, backend=backend) for net in (net_g, net_d))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = GanStep(
        cfg=cfg,
        net_g=net_g,
        net_d=net_d,
        optim_g=optim_g,
        optim_d=optim_d,
        scaler=scaler,
        precision="fp32",
        g_forward=g_forward,
        d_forward=d_forward,
    )
    counter = iter(range(1, 1 << 30))
    return lambda b: step(b, next(counter)).losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--frames", type=int, default=100, help="frames per item (100 per second)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each (compiled: compiling)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="inductor", help="torch.compile's (aot_eager: a quick check)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    batch = _batch(cfg, args.batch_size, args.frames)
    eager, compiled = make_step(cfg, False), make_step(cfg, True, args.backend)

    first = {"eager": eager(batch)}
    start = time.perf_counter()
    first["compiled"] = compiled(batch)
    for _ in range(args.warmup - 1):
        compiled(batch)
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        eager(batch)
    times = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        for name, step in (("eager", eager), ("compiled", compiled)):
            t0 = time.perf_counter()
            step(batch)
            times[name].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["compiled"] / medians["eager"]
    loss_rel = {k: abs(first["compiled"][k] - v) / max(abs(v), 1e-12) for k, v in first["eager"].items()}
    print(
        f"{args.config}, batch {args.batch_size}: eager {medians['eager'] * 1000:.0f} ms, compiled "
        f"{medians['compiled'] * 1000:.0f} ms -> {ratio:.2f}x; compiling (first {args.warmup} steps) "
        f"{compile_s:.0f} s; first-step losses differ by at most {max(loss_rel.values()):.2e} (relative)"
    )
    if args.out:
        keys = ("config", "batch_size", "frames", "warmup", "rounds", "threads", "backend")
        meta = {k: getattr(args, k) for k in keys}
        result = {"median_s": medians, "ratio_compiled_over_eager": ratio, "compile_s": compile_s}
        result |= {"first_step_loss_rel_diff": loss_rel, "times": times, "torch": torch.__version__}
        args.out.write_text(json.dumps({**meta, **result}, indent=2))


if __name__ == "__main__":
    main()
