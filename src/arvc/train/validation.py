"""Held-out validation: how well the generator converts pieces it never trained on.

One evaluator for `arvc train` (after every epoch, or every --val-every epochs) and `arvc compare`. It
converts each held-out piece from its content features and pitch (as inference does: the prior sampled
under a fixed seed, the flow inverted, the decoder run) with an fp32 copy of the generator in eval mode,
and scores the result against the recording:

* `mel_l1`: plain mean absolute difference of the log-mel spectrograms (the training loss is this ×45);
  the number the best model and early stopping are chosen by.
* `stft`: multi-resolution STFT loss (spectral convergence + log-magnitude L1, averaged over three
  resolutions, Parallel WaveGAN's), which also sees what the mel bands blur (phase-smearing, buzz).
* the scores of `arvc.audio.score` (docs/scoring.md), on a fixed subset (the first `SCORE_PIECES` held-out
  pieces), against the recording: F0 RMSE/correlation, V/UV error and MCD, and at every `EXPENSIVE_EVERY`-th
  scored evaluation PESQ, STOI and speaker similarity too (when `arvc[score]` is installed; the speaker
  encoder is loaded once per Validator, on its device). They are computed at the first evaluation, the
  last, and in between whenever they fit in `SCORE_BUDGET` of the time since they were last computed (a
  token bucket: the seconds they take are paid back by training time x SCORE_BUDGET), so that they never
  slow a run down by more than that share, on a slow CPU (every evaluation) as on a fast GPU with a small
  dataset (every few). Pitch is `SCORE_F0`'s whatever the run trained with.

The best model is chosen by `train.select` (`arvc train --select`, mel L1 by default; `BETTER` in
`arvc.config` says which way is better); the selected score is computed at every evaluation.

Evaluating never changes the training run's random stream (`torch.random.fork_rng`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from arvc.audio.mel import spec_to_mel_of, wave_to_mel_of
from arvc.audio.score import (
    BETTER,
    COLUMNS,
    GROUP,
    ScoreDependencyError,
    better,
    load_voice_encoder,
    missing_metrics,
    score,
)
from arvc.config import RunConfig
from arvc.data.dataset import VoiceDataset
from arvc.model import Synthesizer

__all__ = [
    "EXPENSIVE_EVERY",
    "SCORE_BUDGET",
    "SCORE_F0",
    "SCORE_PIECES",
    "STFT_RESOLUTIONS",
    "Evaluation",
    "Validator",
    "check_select",
    "describe_scores",
    "improves",
    "multi_resolution_stft_loss",
]

logger = logging.getLogger(__name__)

# (n_fft, hop, window) of Parallel WaveGAN's multi-resolution STFT loss.
STFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
#: Held-out scores: the first SCORE_PIECES pieces (a fixed subset); F0 and MCD, and PESQ, STOI and speaker
#: similarity at every EXPENSIVE_EVERY-th scored evaluation (the first of a process included); at the first
#: and the last evaluation, and in between within SCORE_BUDGET of the time since. Cost: docs/scoring.md.
SCORE_PIECES = 4
EXPENSIVE_EVERY = 5
SCORE_BUDGET = 0.02
CHEAP, EXPENSIVE = ("f0", "mcd"), ("pesq", "stoi", "speaker")
_NAMES = {"pesq": "PESQ", "stoi": "STOI", "speaker": "speaker similarity"}  # of the expensive groups
SCORE_F0 = "pm"  # the pitch extractor of the held-out scores (pm: about 25 ms per second of audio)


def check_select(select: str) -> None:
    """Refuse an unknown `train.select` (ValueError) or one whose package is missing (ScoreDependencyError,
    naming the extra), before any work."""
    if select not in BETTER:
        raise ValueError(
            f"--select {select!r} is not a held-out metric; choose one of {', '.join(BETTER)} "
            "(docs/scoring.md says what each measures)"
        )
    missing = missing_metrics((GROUP.get(select, ""),))
    if missing:
        raise ScoreDependencyError(f"--select {select}: {next(iter(missing.values()))}")


def improves(select: str, record: dict, best: dict | None) -> bool:
    """Whether an evaluation's `record` (mel_l1, stft and the scores) beats the `best` record so far on
    `select` (a key of BETTER); a record without a finite value of it never does."""
    return better(select, record.get(select, math.nan), None if best is None else best.get(select))


def metric_label(select: str) -> str:
    """The metric that chooses the best model as the user reads it: "mel L1", or the score's key."""
    return "mel L1" if select == "mel_l1" else select


def selected(select: str, record: dict) -> str:
    """A record's value of that metric: "mel L1 0.8815", "mcd_db 6.1200" (the best export's info, the web
    UI's summary)."""
    return f"{metric_label(select)} {record[select]:.4f}"


def describe_scores(scores: dict[str, float]) -> str:
    """The held-out scores as the end of a log line: ", F0 RMSE (cents) 35.2, MCD (dB) 6.12, ..."."""
    return "".join(
        f", {header} {'-' if not math.isfinite(scores[key]) else fmt.format(scores[key])}"
        for key, header, fmt in COLUMNS
        if key in scores
    )


def _piece_scores(
    reference: np.ndarray, converted: np.ndarray, sr: int, groups: tuple[str, ...], encoder=None
) -> dict:
    """One piece's scores of `groups`, nan where a group cannot score it (a silent or non-finite
    conversion: PESQ finds no utterance, resemblyzer finds no speech, ...): validation goes on and says
    nothing but nan. `encoder`: the speaker encoder of `speaker` (arvc.audio.score.load_voice_encoder)."""
    out: dict[str, float] = {}
    finite = bool(np.isfinite(converted).all())
    for part in (tuple(g for g in groups if g in CHEAP), *((g,) for g in groups if g in EXPENSIVE)):
        if not part:
            continue
        try:
            if not finite:
                raise ValueError("non-finite conversion")
            values = score(reference, converted, sr, f0_method=SCORE_F0, metrics=part, encoder=encoder)
            values = values.as_dict()
        except ValueError:
            values = {}
        out.update({k: float(values.get(k, math.nan)) for k, g in GROUP.items() if g in part})
    return out


def multi_resolution_stft_loss(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean over STFT_RESOLUTIONS of spectral convergence + mean |log|S_fake| - log|S_real||, [T] waves."""
    total = 0.0
    for n_fft, hop, win in STFT_RESOLUTIONS:
        window = torch.hann_window(win, device=real.device)
        mags = [
            torch.stft(w, n_fft, hop, win, window, return_complex=True).abs().clamp_min(1e-7)
            for w in (fake, real)
        ]
        convergence = torch.linalg.norm(mags[1] - mags[0]) / torch.linalg.norm(mags[1])
        log_l1 = (mags[1].log() - mags[0].log()).abs().mean()
        total += float(convergence + log_l1)
    return total / len(STFT_RESOLUTIONS)


@dataclass
class Evaluation:
    mel_l1: float  # mean over the held-out pieces
    stft: float
    waves: list[torch.Tensor] = field(default_factory=list)  # converted pieces [T] (the first `keep`)
    mel_real: torch.Tensor | None = None  # [n_mels, frames] of the first piece
    mel_fake: torch.Tensor | None = None
    # arvc.audio.score's scores computed this time (means over the scored pieces; nan: nothing to measure)
    scores: dict[str, float] = field(default_factory=dict)
    score_s: float = 0.0  # seconds spent on them

    @property
    def finite(self) -> bool:
        return math.isfinite(self.mel_l1) and math.isfinite(self.stft)


class Validator:
    """Scores a generator on held-out pieces: `Validator(cfg, data_dir, lines)(net_g.parameters())`.

    `lines` are filelist lines (paths relative to `data_dir`, or absolute). `seed` fixes the prior's
    noise, so two evaluations of the same weights give the same numbers.
    """

    def __init__(
        self,
        cfg: RunConfig,
        data_dir: Path,
        lines: list[str],
        seed: int = 0,
        device: str | torch.device = "cpu",
        max_frames: int = 400,
    ):
        self.cfg, self.seed, self.device = cfg, seed, torch.device(device)
        dataset = VoiceDataset(Path(data_dir), cfg.data, max_frames=max_frames, lines=lines)
        self.items = list(dataset)
        self.names = [entry[0].stem for entry in dataset.entries]
        self.model = Synthesizer(cfg).eval().to(self.device)
        self.select = cfg.train.select
        check_select(self.select)
        missing = missing_metrics(EXPENSIVE)
        if missing and self.items:
            names = "/".join(_NAMES[g] for g in missing)
            logger.info("held-out validation without %s: %s", names, missing[next(iter(missing))])
        self.expensive = tuple(g for g in EXPENSIVE if g not in missing)
        # resemblyzer's speaker encoder, once per Validator, on the validation device (its random initial
        # weights are drawn outside the training run's random stream)
        self.encoder = load_voice_encoder(self.device) if "speaker" in self.expensive and self.items else None
        self.scored = 0  # evaluations of this process that computed the scores: every EXPENSIVE_EVERY-th, all
        self.bank = 0.0  # seconds of scoring the time since the last evaluation has paid for (SCORE_BUDGET)
        self.ended: float | None = None  # when the last evaluation ended

    def due(self, final: bool = False) -> tuple[str, ...]:
        """The score groups of the next evaluation: all of them at the run's last (`final`), the cheap ones
        (and every EXPENSIVE_EVERY-th time the expensive ones) when the budget allows, and always the
        `train.select` one."""
        if self.ended is not None:
            self.bank += SCORE_BUDGET * (time.perf_counter() - self.ended)
        chosen = GROUP.get(self.select)
        if not (final or self.bank >= 0):
            return (chosen,) if chosen else ()
        expensive = final or self.scored % EXPENSIVE_EVERY == 0
        return (*CHEAP, *(g for g in self.expensive if expensive or g == chosen))

    def __len__(self) -> int:
        return len(self.items)

    def originals(self, count: int | None = None) -> list[torch.Tensor]:
        """The recordings of the first `count` held-out pieces, [T] each (float32, the model's rate)."""
        return [item.wave.reshape(-1) for item in self.items[:count]]

    def load(self, params) -> None:
        """Copy generator parameters (in `net_g.parameters()` order, any dtype/device) into the copy."""
        params = list(params)
        own = list(self.model.parameters())
        if len(own) != len(params):
            raise ValueError(f"generator has {len(own)} parameters, got {len(params)}")
        with torch.no_grad():
            for mine, theirs in zip(own, params, strict=True):
                mine.copy_(theirs.detach().to(self.device, torch.float32))

    @torch.no_grad()
    def __call__(self, params=None, keep: int = 0, final: bool = False, scores: bool = True) -> Evaluation:
        """Evaluate (loading `params` first, when given); keep the converted waves of the first `keep`.

        `scores`: compute the held-out scores due (`due(final)`), counting this as an evaluation; False
        for a conversion only (listening samples between evaluations)."""
        if params is not None:
            self.load(params)
        d = self.cfg.data
        groups = self.due(final) if scores else ()
        self.scored += any(g in CHEAP for g in groups)
        per_piece: list[dict] = []
        score_s = 0.0
        mel_total, stft_total, waves = 0.0, 0.0, []
        mel_real = mel_fake = None
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(self.seed)
            for index, item in enumerate(self.items):
                item = type(item)(*(x.to(self.device) if isinstance(x, torch.Tensor) else x for x in item))
                n = item.phone.size(0)
                wave = self.model.infer(
                    item.phone[None],
                    torch.tensor([n], device=self.device),
                    item.pitch[None],
                    item.pitchf[None],
                    torch.tensor([item.sid], device=self.device),
                )
                wave = wave.float().reshape(-1)
                fake = wave_to_mel_of(wave[None], d)
                real = spec_to_mel_of(item.spec[None], d)
                frames = min(fake.size(-1), real.size(-1))
                mel_total += torch.nn.functional.l1_loss(fake[..., :frames], real[..., :frames]).item()
                target = item.wave.reshape(-1)
                samples = min(len(wave), len(target))
                stft_total += multi_resolution_stft_loss(wave[:samples], target[:samples])
                if groups and index < SCORE_PIECES:
                    started = time.perf_counter()
                    pair = (x[:samples].double().cpu().numpy() for x in (target, wave))
                    per_piece.append(_piece_scores(*pair, d.sampling_rate, groups, self.encoder))
                    score_s += time.perf_counter() - started
                if index < keep:
                    waves.append(wave.cpu())
                if index == 0:
                    mel_real, mel_fake = real[0, :, :frames].cpu(), fake[0, :, :frames].cpu()
        if scores:
            self.bank -= score_s  # paid back by the training time until the next evaluation
            self.ended = time.perf_counter()
        count = len(self.items)
        means = {
            key: _finite_mean([p[key] for p in per_piece]) for key in (per_piece[0] if per_piece else {})
        }
        return Evaluation(mel_total / count, stft_total / count, waves, mel_real, mel_fake, means, score_s)


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
