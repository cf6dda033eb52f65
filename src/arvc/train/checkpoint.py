"""Checkpoints that survive crashes and say what wrote them.

One file per checkpoint, `runs/RUN/checkpoints/ckpt_E{epoch:05d}_S{step:08d}.pt`, holding the generator,
discriminator, both optimizers *with their registry name and hyperparameters*, schedulers, grad scaler,
epoch, step, RNG states and the resolved config. Written with :func:`arvc._files.atomic_file` (a temporary
file in the same directory, fsynced and renamed over), so a crash mid-save leaves the previous checkpoint as
it was. Loaded with
`weights_only=True`: a checkpoint is data, never code.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from arvc._files import atomic_file
from arvc.modelfile.formats import CHECKPOINT_FORMAT

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "atomic_save",
    "checkpoint_path",
    "checkpoint_position",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "optimizer_record",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "rng_state",
    "set_rng_state",
]

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^ckpt_E(\d{5,})_S(\d{8,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def checkpoint_path(run_dir: Path, epoch: int, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt_E{epoch:05d}_S{step:08d}.pt"


def checkpoint_position(path: Path) -> tuple[int, int] | None:
    """(epoch, step) from a checkpoint's file name (`ckpt_E00003_S00000120.pt`); None for other names."""
    match = _NAME.match(Path(path).name)
    return None if match is None else (int(match[1]), int(match[2]))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (temporary files of an interrupted save are not listed)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(position, p) for p in folder.iterdir() if (position := checkpoint_position(p)) is not None]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to `path` so that `path` is either the old file or the complete new one, never half."""
    with atomic_file(path) as temporary, open(temporary, "wb") as handle:
        torch.save(obj, handle)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete temporary files a killed save left behind (they are never read as checkpoints)."""
    folder = Path(run_dir) / "checkpoints"
    stale = sorted(folder.glob(".ckpt_*.tmp")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d unfinished checkpoint file(s) from an interrupted save", len(stale))
    return stale


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints (only after a new one was written)."""
    if keep_last < 1:
        raise ValueError(f"Invalid keep_last: {keep_last}; keep at least one checkpoint")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict:
    """Load and sanity-check a checkpoint; any problem is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, bit rot, a pickle that needs code, ...
        raise CheckpointError(
            f"Checkpoint {path} is corrupted or not a plain-data checkpoint "
            f"({type(error).__name__}: {error}). "
            "Nothing was changed; remove this file to resume from the previous checkpoint, "
            "or pass an older checkpoint file to --resume."
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an arvc training checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    if checkpoint.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer arvc (checkpoint version {checkpoint['version']}); upgrade arvc"
        )
    missing = [
        k
        for k in ("generator", "discriminator", "optim_g", "optim_d", "epoch", "step")
        if k not in checkpoint
    ]
    if missing:
        raise CheckpointError(f"Checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return checkpoint


def optimizer_record(name: str, hyperparameters: dict, optimizer: torch.optim.Optimizer) -> dict:
    """What a checkpoint stores for an optimizer: who it is, how it was configured, and its state."""
    return {"name": name, "hyperparameters": dict(hyperparameters), "state": optimizer.state_dict()}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
