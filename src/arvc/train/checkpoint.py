"""Checkpoints that survive crashes and say what wrote them.

One file per checkpoint, `runs/RUN/checkpoints/ckpt_E{epoch:05d}_S{step:08d}.pt`, holding the generator,
discriminator, both optimizers *with their registry name and hyperparameters*, the lr schedule, grad
scaler, epoch, step, RNG states and the resolved config. Written with :func:`arvc._files.atomic_file` (a
temporary file in the same directory, fsynced and renamed over), so a crash mid-save leaves the previous
checkpoint as it was. Loaded with `weights_only=True`: a checkpoint is data, never code.

The checkpoint is the truth on resume: only the settings in `RESUMABLE_CHANGES` may differ from its
config (`check_resume_config`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from arvc._files import atomic_file, write_text
from arvc.data.outputs import RunFolder
from arvc.modelfile.formats import CHECKPOINT_FORMAT

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "RESUMABLE_CHANGES",
    "abandon_later_checkpoints",
    "atomic_save",
    "best_record",
    "check_resume_config",
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
    return RunFolder(run_dir).checkpoints / f"ckpt_E{epoch:05d}_S{step:08d}.pt"


def checkpoint_position(path: Path) -> tuple[int, int] | None:
    """(epoch, step) from a checkpoint's file name (`ckpt_E00003_S00000120.pt`); None for other names."""
    match = _NAME.match(Path(path).name)
    return None if match is None else (int(match[1]), int(match[2]))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (temporary files of an interrupted save are not listed)."""
    folder = RunFolder(run_dir).checkpoints
    if not folder.is_dir():
        return []
    found = [(position, p) for p in folder.iterdir() if (position := checkpoint_position(p)) is not None]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def best_record(run_dir: Path) -> Path:
    """export/best/best.json: the best held-out epoch's scores and its checkpoint, as a name inside
    checkpoints/ ("abandoned/<UTC time>/NAME" once a resume from an older checkpoint moved it there)."""
    return RunFolder(run_dir).best_record


def _best_checkpoint(run_dir: Path) -> tuple[dict, str] | None:
    """(best.json, the checkpoint it names) or None."""
    try:
        record = json.loads(best_record(run_dir).read_text())
    except (OSError, ValueError):
        return None
    name = record.get("checkpoint") if isinstance(record, dict) else None
    return (record, name) if isinstance(name, str) else None


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to `path` so that `path` is either the old file or the complete new one, never half."""
    with atomic_file(path) as temporary, open(temporary, "wb") as handle:
        torch.save(obj, handle)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete temporary files a killed save left behind (they are never read as checkpoints)."""
    folder = RunFolder(run_dir).checkpoints
    stale = sorted(folder.glob(".ckpt_*.tmp")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d unfinished checkpoint file(s) from an interrupted save", len(stale))
    return stale


def prune_checkpoints(
    run_dir: Path, keep_last: int, written: Path | None = None, protect: Path | None = None
) -> None:
    """Delete all but the newest `keep_last` checkpoints (only after a new one was written).

    `written`, the checkpoint just written, is always kept (it counts as one of the `keep_last`), even
    where older-named ones exist: the newest written checkpoint is never deleted. `protect` (the best
    model's checkpoint) and the checkpoint export/best/best.json names are never deleted either, and do
    not count, so best.json always names a checkpoint that exists."""
    if keep_last < 1:
        raise ValueError(f"Invalid keep_last: {keep_last}; keep at least one checkpoint")
    named = _best_checkpoint(run_dir)
    exported_best = RunFolder(run_dir).checkpoints / named[1] if named else None
    kept = {Path(p) for p in (written, protect, exported_best) if p is not None}
    others = [p for p in list_checkpoints(run_dir) if p not in kept]
    for old in others[: len(others) - (keep_last - (written is not None))]:
        old.unlink(missing_ok=True)


def _abandoned_folder(run_dir: Path) -> Path:
    """A new folder checkpoints/abandoned/<UTC time>/ for one resume's abandoned checkpoints: a second
    resume from the same checkpoint abandons a continuation whose checkpoints have the same names as the
    first's, which one shared folder would overwrite (and best.json would name other weights)."""
    parent = RunFolder(run_dir).checkpoints / "abandoned"
    parent.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    for attempt in itertools.count(1):  # unique even for two resumes within a microsecond
        folder = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise AssertionError("unreachable")


def abandon_later_checkpoints(
    run_dir: Path, resume_from: Path, position: tuple[int, int] | None = None
) -> list[Path]:
    """Resuming from an older checkpoint of the run: move the run's later checkpoints aside.

    They belong to the continuation this resume replaces; left in place they would sort after the new
    checkpoints (by epoch and step), so `--resume RUN` would pick them and pruning would delete what the
    resumed run writes. They go to a new folder checkpoints/abandoned/<UTC time>/ per resume (not deleted,
    never overwritten; move them back to use them).
    "Later" is after `position`, the (epoch, step) the resumed checkpoint holds; without it, its file
    name's, and a file renamed by the user (no position in its name) moves nothing."""
    resume_from = Path(resume_from)
    at = position if position is not None else checkpoint_position(resume_from)
    if at is None:
        return []
    later = [p for p in list_checkpoints(run_dir) if checkpoint_position(p) > tuple(at)]
    if not later or resume_from.parent.resolve() != RunFolder(run_dir).checkpoints.resolve():
        return []
    folder = _abandoned_folder(run_dir)
    for path in later:
        os.replace(path, folder / path.name)
    named = _best_checkpoint(run_dir)
    if named is not None and named[1] in {p.name for p in later}:  # best.json follows its checkpoint
        record, name = named
        record["checkpoint"] = folder.joinpath(name).relative_to(RunFolder(run_dir).checkpoints).as_posix()
        record["note"] = (
            f"the run was resumed from the older {resume_from.name}: this model and its checkpoint belong "
            "to the continuation that resume replaced (export/best is replaced when the new one validates "
            "better)"
        )
        write_text(best_record(run_dir), json.dumps(record, indent=2))
        logger.warning("%s now names checkpoints/%s", best_record(run_dir), record["checkpoint"])
    logger.warning(
        "resuming from %s, an older checkpoint of this run: its %d later checkpoint(s) (%s) were moved "
        "to %s, since this run replaces them",
        resume_from.name,
        len(later),
        ", ".join(p.name for p in later),
        folder,
    )
    return later


# Settings a resumed run may change: the run length (the schedule is re-planned), how often it logs,
# saves and validates, how many checkpoints it keeps and when it stops early. Everything else would not
# continue the run as trained.
RESUMABLE_CHANGES = (
    "train.epochs",
    "train.log_interval",
    "train.save_every",
    "train.keep_last",
    "train.val_every",
    "train.early_stop",
    "train.min_delta",
    "train.checkpointing",  # recomputes activations: the same gradients bit for bit, less memory
)
# Why a setting cannot change, where the general reason (the run would not continue as trained) is not enough.
_WHY_FIXED = {
    "train.accumulate": "accumulate is part of the effective batch (batch_size x accumulate items per "
    "optimizer step) and of the position in the epoch the checkpoint holds",
    "train.select": "the run's best model (export/best) was chosen by its own metric, and a new one would "
    "compare against a best it never chose; score the run's models with `arvc score` instead",
}


def check_resume_config(saved: dict, cfg, source: Path) -> None:
    """Refuse a resume whose config differs from the checkpoint's in a setting that cannot change.

    `saved` is the checkpoint's config (a dict), `cfg` the RunConfig asked for. A CheckpointError names
    every such setting, old -> new, and what to do."""
    from arvc.config import RunConfig

    old, new = _flat(RunConfig.from_dict(saved).to_dict()), _flat(cfg.to_dict())
    changed = [k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k]]
    if changed:
        detail = "; ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        why = "".join(f" ({_WHY_FIXED[k]})" for k in changed if k in _WHY_FIXED)
        raise CheckpointError(
            f"cannot resume {source} with changed settings ({detail}): a resumed run continues exactly as "
            f"it was trained (batch size, seed, model and data settings included){why}. Drop those flags to "
            f"resume it, or start a new run with --name. On resume only {', '.join(RESUMABLE_CHANGES)} "
            "(and --lr, --max-steps) may change."
        )


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_checkpoint(path: Path, mmap: bool = False) -> dict:
    """Load and sanity-check a checkpoint; any problem is a CheckpointError naming the file.

    `mmap=True` maps the tensors instead of reading them (cheap, e.g. to read only the config)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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
    """Restore `rng_state()`; on another machine, the GPUs both have (none on a CPU: a run written on a GPU
    resumes there; torch.cuda.set_rng_state_all would fail on a machine with fewer GPUs)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for index, generator in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(generator, index)
