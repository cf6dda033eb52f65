"""What the held-out scores (arvc.train.validation) add to an evaluation, against a training step.

Part 1 (the tiny config on the demo voice, CPU): a short `train()` gives the training step's time
(metrics.csv, one row per step); one evaluation without the scores (mel L1 + STFT of every held-out piece)
is timed, then the scores alone on the scored subset: F0/MCD, PESQ/STOI, and speaker similarity (with the
Validator's encoder; its first loading in the process, a later loading and its first embedding are timed
once each, first).
Part 2 (v2-40k, scores only): the scores of SCORE_PIECES demo-voice pieces of the
Validator's longest (400 frames: 4 s at 40 kHz), resampled to 40 kHz; the conversion itself runs on the
training device and is not timed. Both report wall and this process's CPU seconds (a shared machine inflates
the wall ones). Usage:

    python benchmarks/validation_cost.py --out /tmp/validation_cost [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def timed(function, repeats: int) -> dict:
    print(f"timing {function}", file=sys.stderr, flush=True)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def tiny_part(out: Path, repeats: int) -> dict:
    from arvc.audio.score import load_voice_encoder
    from arvc.config import apply_overrides, load_config
    from arvc.data.prepare import prepare_data
    from arvc.train.logs import read_metrics
    from arvc.train.loop import TrainOptions, train
    from arvc.train.validation import SCORE_PIECES, Validator, _piece_scores

    cfg = apply_overrides(
        load_config("tiny"), {"train.epochs": 1, "train.log_interval": 1, "train.save_every": 1}
    )
    run = out / "run"
    data = run / "data"
    if not (data / "filelist.txt").is_file():
        prepare_data(cfg, run)  # the demo voice, as `arvc train` prepares it
    if not (run / "split.json").is_file():
        train(TrainOptions(run_dir=run, data_dir=data, config=cfg))
    steps = [float(r["seconds"]) for r in read_metrics(run)][1:]  # the first step warms up
    held = json.loads((run / "split.json").read_text())["held"]
    validator = Validator(cfg, data, held, cfg.train.seed)
    pieces = len(validator)
    conversion = timed(lambda: validator(scores=False), 1)  # mel L1 + STFT of every held-out piece
    validator.items = validator.items[:SCORE_PIECES]  # the scored subset
    out = validator(scores=False, keep=SCORE_PIECES)
    pairs = [
        (ref.double().numpy()[: len(w)], w.double().numpy()[: len(ref)])
        for ref, w in zip(validator.originals(), out.waves, strict=True)
    ]
    sr = cfg.data.sampling_rate

    def run_groups(groups):
        for ref, conv in pairs:
            _piece_scores(ref, conv, sr, groups)

    first_speaker = timed(lambda: _piece_scores(*pairs[0], sr, ("speaker",), validator.encoder), 1)
    run_groups(("f0", "mcd", "pesq", "stoi"))  # warm-up: imports, the warping matrix
    return {
        "held_out_pieces": pieces,
        "scored_pieces": len(pairs),
        "scored_audio_s": sum(len(r) for r, _ in pairs) / sr,
        "train_step_s": statistics.median(steps),
        "steps_per_epoch": len(read_metrics(run)),
        "evaluation_without_scores": conversion,
        "f0_mcd": timed(lambda: run_groups(("f0", "mcd")), repeats),
        "pesq_stoi": timed(lambda: run_groups(("pesq", "stoi")), repeats),
        "speaker_encoder_load": timed(lambda: load_voice_encoder("cpu"), repeats),
        "speaker_first_piece": first_speaker,  # the encoder's warm-up
        "speaker": timed(lambda: run_groups(("speaker",)), repeats),
    }


def v2_40k_part(repeats: int) -> dict:
    from arvc.audio.io import resample
    from arvc.audio.score import score
    from arvc.data.demo import synthesize_speech
    from arvc.train.validation import SCORE_F0, SCORE_PIECES

    sr = 40000
    piece = resample(synthesize_speech(6.0, 16000, np.random.default_rng(0)), 16000, sr)[: 4 * sr]
    noisy = piece + np.random.default_rng(0).normal(0, 0.01, piece.shape).astype(np.float32)

    def run(metrics):
        for _ in range(SCORE_PIECES):
            score(piece, noisy, sr, f0_method=SCORE_F0, metrics=metrics)

    run(("f0", "mcd", "pesq", "stoi", "speaker"))  # warm-up
    return {
        "pieces": SCORE_PIECES,
        "piece_s": len(piece) / sr,
        "f0_mcd": timed(lambda: run(("f0", "mcd")), repeats),
        "pesq_stoi": timed(lambda: run(("pesq", "stoi")), repeats),
        "speaker": timed(lambda: run(("speaker",)), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a scratch folder (the demo data, a run)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    from arvc.audio.score import load_voice_encoder

    # once per process: importing resemblyzer and reading its weights the first time
    speaker_first_load = timed(lambda: load_voice_encoder("cpu"), 1)
    result = {
        "speaker_first_load": speaker_first_load,
        "tiny_demo": tiny_part(args.out, args.repeats),
        "v2_40k_scores": v2_40k_part(args.repeats),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
