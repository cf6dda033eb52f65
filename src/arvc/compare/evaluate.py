"""Held-out mel L1: the one number that says how well each optimizer's generator learned the voice.

`TrainOptions` has no filelist option, but `VoiceDataset` accepts absolute paths in a filelist, so the
split is done with two folders: `train_data/filelist.txt` (90 %, absolute paths into `data/`) is what
every run trains on, `holdout.txt` (10 %) is never seen in training.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from arvc.audio.mel import spec_to_mel_of, wave_to_mel_of
from arvc.config import RunConfig
from arvc.data.dataset import VoiceDataset
from arvc.data.preprocess import FILELIST, DataError
from arvc.model import Synthesizer

__all__ = ["HOLDOUT_FILE", "HeldOutEvaluator", "split_filelist"]

logger = logging.getLogger(__name__)

HOLDOUT_FILE = "holdout.txt"
TRAIN_DIR = "train_data"


def _absolute(line: str, data_dir: Path) -> str:
    fields = line.strip().split("|")
    paths = [f if Path(f).is_absolute() else str((data_dir / f).resolve()) for f in fields[:4]]
    return "|".join([*paths, *fields[4:]])


def split_filelist(data_dir: Path, out_dir: Path, fraction: float = 0.1, seed: int = 0) -> tuple[Path, Path]:
    """Write a seeded train/held-out split of `data_dir/filelist.txt`; returns (train_dir, holdout file).

    The split depends only on the filelist and the seed, so re-running a comparison reuses it.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    lines = [line for line in (data_dir / FILELIST).read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        raise DataError(f"{data_dir / FILELIST} has {len(lines)} piece(s); a comparison needs at least 2")
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    n_hold = min(len(lines) - 1, max(1, round(fraction * len(lines))))
    held = set(order[:n_hold])
    train_dir = out_dir / TRAIN_DIR
    train_dir.mkdir(parents=True, exist_ok=True)
    train_lines = [_absolute(line, data_dir) for i, line in enumerate(lines) if i not in held]
    hold_lines = [_absolute(line, data_dir) for i, line in enumerate(lines) if i in held]
    (train_dir / FILELIST).write_text("\n".join(train_lines) + "\n")
    holdout = out_dir / HOLDOUT_FILE
    holdout.write_text("\n".join(hold_lines) + "\n")
    logger.info("held out %d of %d pieces for evaluation", n_hold, len(lines))
    return train_dir, holdout


class HeldOutEvaluator:
    """Mel L1 (unweighted, not ×45) between held-out recordings and the generator's conversion of them.

    Runs an fp32 copy of the generator in eval mode under a fixed seed (the prior sample is random), inside
    `torch.random.fork_rng`, so evaluating never changes the training run's random stream.
    """

    def __init__(self, cfg: RunConfig, holdout: Path, seed: int = 0, max_frames: int = 400, device="cpu"):
        self.cfg, self.seed, self.device = cfg, seed, torch.device(device)
        self.items = list(
            VoiceDataset(Path(holdout).parent, cfg.data, filelist=holdout, max_frames=max_frames)
        )
        self.model = Synthesizer(cfg).eval().to(self.device)

    def load(self, params: list[torch.Tensor]) -> None:
        """Copy live generator parameters (in `net_g.parameters()` order, e.g. from optim_g) in."""
        own = list(self.model.parameters())
        if len(own) != len(params):
            raise ValueError(f"generator has {len(own)} parameters, got {len(params)}")
        with torch.no_grad():
            for mine, theirs in zip(own, params, strict=True):
                mine.copy_(theirs.detach().to(self.device, torch.float32))

    @torch.no_grad()
    def __call__(self, params: list[torch.Tensor] | None = None) -> float:
        if params is not None:
            self.load(params)
        d = self.cfg.data
        total = 0.0
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(self.seed)
            for item in self.items:
                item = type(item)(*(x.to(self.device) if isinstance(x, torch.Tensor) else x for x in item))
                n = item.phone.size(0)
                wave = self.model.infer(
                    item.phone[None],
                    torch.tensor([n], device=self.device),
                    item.pitch[None],
                    item.pitchf[None],
                    torch.tensor([item.sid], device=self.device),
                )
                fake = wave_to_mel_of(wave.float().squeeze(1), d)
                real = spec_to_mel_of(item.spec[None], d)
                frames = min(fake.size(-1), real.size(-1))
                total += torch.nn.functional.l1_loss(fake[..., :frames], real[..., :frames]).item()
        return total / len(self.items)
