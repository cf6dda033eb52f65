"""The comparison's held-out split, made with the trainer's own split and scored by its own evaluator.

`TrainOptions` trains on a data folder's filelist, so the split is two files: `train_data/filelist.txt`
(the training pieces, absolute paths into `data/`) is what every run trains on (with the trainer's own
validation off), `split.json` records the held-out pieces (`arvc.data.split`), which the comparison scores
after every epoch with `arvc.train.validation.Validator`, the evaluator `arvc train` uses.
"""

from __future__ import annotations

import logging
from pathlib import Path

from arvc._files import write_text
from arvc.data.preprocess import FILELIST
from arvc.data.split import SPLIT_FILE, Split, split_pieces, write_split

__all__ = ["SPLIT_FILE", "TRAIN_DIR", "split_dataset"]

logger = logging.getLogger(__name__)

TRAIN_DIR = "train_data"


def _absolute(line: str, data_dir: Path) -> str:
    fields = line.strip().split("|")
    paths = [f if Path(f).is_absolute() else str((data_dir / f).resolve()) for f in fields[:4]]
    return "|".join([*paths, *fields[4:]])


def split_dataset(data_dir: Path, out_dir: Path, fraction: float = 0.1, seed: int = 0) -> tuple[Path, Split]:
    """Split `data_dir/filelist.txt` (seeded, whole recordings where it can); returns (train_dir, split).

    The split depends only on the filelist and the seed, so re-running a comparison reuses it.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    lines = (data_dir / FILELIST).read_text().splitlines()
    split = split_pieces(lines, fraction, seed)
    train_dir = out_dir / TRAIN_DIR
    train_dir.mkdir(parents=True, exist_ok=True)
    write_text(train_dir / FILELIST, "\n".join(_absolute(line, data_dir) for line in split.train) + "\n")
    write_split(split, out_dir / SPLIT_FILE)
    logger.info("%s", split.how)
    return train_dir, split
