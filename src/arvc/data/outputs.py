"""What arvc itself writes into a folder, so that it is never mistaken for input or silently replaced.

A *run folder* (`runs/NAME/`) holds `data/` (what `arvc preprocess` writes, with its `preprocess.json`)
and the products of training: `checkpoints/`, `export/`, `metrics.csv`, `tensorboard/`, `loss.png`.
A comparison folder holds `compare.json`. Preprocessing skips every such folder inside a dataset (a run
kept in `recordings/runs/` would otherwise feed its own slices back in as recordings), and a new run
refuses a folder that already holds a product — unless none of them is a checkpoint or an export: a run
killed before its first checkpoint is started again, its leftovers moved to a dated `restarted-…/` folder
inside it (`leftovers_of_a_run`).

`RunFolder` is the one place a run folder's layout is written down: every module that reads or writes a
run's files (training, checkpoints, logs, export, the index, the CLI, the web UI) asks it for the path.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COMPARE_SETUP",
    "FILELIST",
    "MANIFEST",
    "RESTARTED_PREFIX",
    "RUN_LOCK",
    "RUN_PRODUCTS",
    "SPLIT_FILE",
    "RunFolder",
    "arvc_output_kind",
    "check_run_name",
    "find_arvc_outputs",
    "leftovers_of_a_run",
    "restarted_folder",
    "run_products",
]

_CHECKPOINTS, _EXPORT, _METRICS, _TENSORBOARD, _LOSS_PLOT = (
    "checkpoints", "export", "metrics.csv", "tensorboard", "loss.png"
)  # fmt: skip
RUN_PRODUCTS = (_CHECKPOINTS, _EXPORT, _METRICS, _TENSORBOARD, _LOSS_PLOT)
_DATA = "data"  # the run's preprocessed data
MANIFEST = "preprocess.json"  # in a data folder: data/preprocess.py writes it first, before any slice
FILELIST = "filelist.txt"  # in a data folder: one line per training piece
SPLIT_FILE = "split.json"  # the held-out validation pieces (arvc.data.split), for the user to read
COMPARE_SETUP = "compare.json"  # in a comparison folder: compare/runner.py writes it before any run
RUN_LOCK = ".arvc-run.lock"  # held while a process trains the run (arvc.train.runlock)


@dataclass(frozen=True)
class RunFolder:
    """The layout of a run folder (runs/NAME): where each of its files and folders is."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def data(self) -> Path:
        """The preprocessed data (`arvc preprocess`; reused when the run starts again)."""
        return self.root / _DATA

    @property
    def filelist(self) -> Path:
        return self.data / FILELIST

    @property
    def config(self) -> Path:
        """config.json: the run's resolved RunConfig, for the user and `arvc index`."""
        return self.root / "config.json"

    @property
    def split(self) -> Path:
        return self.root / SPLIT_FILE

    @property
    def checkpoints(self) -> Path:
        """ckpt_E*_S*.pt (arvc.train.checkpoint names them), and abandoned/ continuations."""
        return self.root / _CHECKPOINTS

    @property
    def export(self) -> Path:
        """The exported model at the end of training (model.safetensors, model.json, model_rvc.pth)."""
        return self.root / _EXPORT

    @property
    def best_export(self) -> Path:
        """export/best: the model of the best held-out evaluation so far."""
        return self.export / "best"

    @property
    def best_record(self) -> Path:
        """export/best/best.json: which evaluation and checkpoint the best model is."""
        return self.best_export / "best.json"

    @property
    def metrics(self) -> Path:
        return self.root / _METRICS

    @property
    def validation(self) -> Path:
        """validation.csv: one row per held-out evaluation."""
        return self.root / "validation.csv"

    @property
    def tensorboard(self) -> Path:
        return self.root / _TENSORBOARD

    @property
    def loss_plot(self) -> Path:
        return self.root / _LOSS_PLOT

    @property
    def samples(self) -> Path:
        """Listening samples: original/ (held-out recordings) and epoch_NNNN/ (their conversions)."""
        return self.root / "samples"

    @property
    def sample_originals(self) -> Path:
        return self.samples / "original"

    def epoch_samples(self, epoch: int) -> Path:
        """samples/epoch_NNNN: the held-out pieces as the model converted them after `epoch`."""
        return self.samples / f"epoch_{epoch:04d}"

    def sampled_epochs(self) -> list[tuple[int, Path]]:
        """(epoch, folder) of every epoch_NNNN under samples/, oldest first."""
        found = []
        for folder in self.samples.glob("epoch_*"):
            number = folder.name.removeprefix("epoch_")
            if folder.is_dir() and number.isdigit():
                found.append((int(number), folder))
        return sorted(found)


def run_products(run_dir: str | os.PathLike) -> list[Path]:
    """The products of training already in `run_dir` (files, or folders that are not empty)."""
    run_dir = Path(run_dir)
    found = []
    for name in RUN_PRODUCTS:
        path = run_dir / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(path)
    return found


RESTARTED_PREFIX = "restarted-"  # RUN/restarted-DATE/: what a run started again found in its folder
_KEPT_ON_RESTART = (_DATA,)  # preprocessed data: reused by the new run


def leftovers_of_a_run(run_dir: str | os.PathLike) -> list[Path]:
    """What a run started again in `run_dir` moves aside: everything in it but its preprocessed data,
    the run lock and earlier restarted-… folders."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(
        path
        for path in run_dir.iterdir()
        if path.name not in (*_KEPT_ON_RESTART, RUN_LOCK) and not path.name.startswith(RESTARTED_PREFIX)
    )


def restarted_folder(run_dir: str | os.PathLike) -> Path:
    """A new dated folder name for the leftovers of a run started again (not created here)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = Path(run_dir) / f"{RESTARTED_PREFIX}{stamp}", 1
    while folder.exists():
        n += 1
        folder = Path(run_dir) / f"{RESTARTED_PREFIX}{stamp}-{n}"
    return folder


def arvc_output_kind(folder: str | os.PathLike) -> str | None:
    """What arvc output `folder` is ("preprocessed data", "a comparison", "a training run"), or None."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return "preprocessed data"
    if (folder / COMPARE_SETUP).is_file():
        return "a comparison"
    run = RunFolder(folder)
    if (run.data / MANIFEST).is_file() or (run.config.is_file() and run_products(folder)):
        return "a training run"
    return None


def find_arvc_outputs(root: str | os.PathLike) -> list[tuple[Path, str]]:
    """Every arvc output folder inside `root` (not `root` itself), outermost only, with its kind."""
    root = Path(root)
    found = []
    for folder, subfolders, _ in os.walk(root):
        kept = []
        for name in sorted(subfolders):
            path = Path(folder) / name
            kind = arvc_output_kind(path)
            if kind is None:
                kept.append(name)
            else:
                found.append((path, kind))
        subfolders[:] = kept  # never look inside an output folder
    return found


def check_run_name(name: str) -> str:
    """A run name is one folder name inside the runs folder; anything else is a ValueError saying so."""
    separators = {"/", os.sep, os.altsep} - {None}
    if not name or name in (".", "..") or any(s in name for s in separators) or "\0" in name:
        raise ValueError(
            f"run name {name!r} is not one folder name: a run lives in RUNS_DIR/NAME, so NAME may not be "
            "empty, '.' or '..', nor contain '/'; e.g. --name alice (use --runs-dir for another folder)"
        )
    return name
