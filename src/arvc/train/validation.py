"""Held-out validation: how well the generator converts pieces it never trained on.

One evaluator for `arvc train` (after every epoch, or every --val-every epochs) and `arvc compare`. It
converts each held-out piece from its content features and pitch (as inference does: the prior sampled
under a fixed seed, the flow inverted, the decoder run) with an fp32 copy of the generator in eval mode,
and scores the result against the recording:

* `mel_l1`: plain mean absolute difference of the log-mel spectrograms (the training loss is this ×45);
  the number the best model and early stopping are chosen by.
* `stft`: multi-resolution STFT loss (spectral convergence + log-magnitude L1, averaged over three
  resolutions, Parallel WaveGAN's), which also sees what the mel bands blur (phase-smearing, buzz).

Evaluating never changes the training run's random stream (`torch.random.fork_rng`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arvc.audio.mel import spec_to_mel_of, wave_to_mel_of
from arvc.config import RunConfig
from arvc.data.dataset import VoiceDataset
from arvc.model import Synthesizer

__all__ = ["STFT_RESOLUTIONS", "Evaluation", "Validator", "multi_resolution_stft_loss"]

# (n_fft, hop, window) of Parallel WaveGAN's multi-resolution STFT loss.
STFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))


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
    def __call__(self, params=None, keep: int = 0) -> Evaluation:
        """Evaluate (loading `params` first, when given); keep the converted waves of the first `keep`."""
        if params is not None:
            self.load(params)
        d = self.cfg.data
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
                if index < keep:
                    waves.append(wave.cpu())
                if index == 0:
                    mel_real, mel_fake = real[0, :, :frames].cpu(), fake[0, :, :frames].cpu()
        count = len(self.items)
        return Evaluation(mel_total / count, stft_total / count, waves, mel_real, mel_fake)
