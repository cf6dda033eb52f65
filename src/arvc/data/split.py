"""The held-out validation split: which pieces of a dataset a run never trains on.

Pieces cut from one recording overlap in time (RVC's chunking keeps 0.3 s of the previous piece), and
neighbouring pieces share the voice's state of the day, so a piece held out next to its training
neighbours measures memory more than generalisation. Where the dataset has several recordings, whole
recordings are held out; where it has one (or its recordings are too long to hold one out), one contiguous
block of pieces is, so that only its two edges touch training pieces. `Split.how` says which was done.

The split is a pure function of the filelist's lines, the fraction and the seed; a run records it (the
held-out lines, `write_split`) and reads it back on resume (`read_split`).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from arvc._files import write_text
from arvc.data.outputs import SPLIT_FILE
from arvc.data.preprocess import DataError

__all__ = [
    "DEFAULT_VAL_FRACTION",
    "MAX_HELD_PIECES",
    "MIN_HELD_PIECES",
    "SPLIT_FILE",
    "Split",
    "check_fraction",
    "read_split",
    "recording_of",
    "split_pieces",
    "write_split",
]

DEFAULT_VAL_FRACTION = 0.1
MIN_HELD_PIECES = 2  # one piece is too noisy a score
MAX_HELD_PIECES = 20  # every evaluation converts them all: keep it a small fraction of an epoch


@dataclass(frozen=True)
class Split:
    train: list[str]  # filelist lines, as in the dataset's filelist.txt
    held: list[str]
    how: str  # one sentence for the log: what was held out and why that way
    fraction: float
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def check_fraction(fraction: float) -> float:
    """A validation fraction must be in [0, 0.5]; 0 means no validation."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction <= 0.5:
        raise DataError(f"validation fraction {fraction!r} must be between 0 (no validation) and 0.5")
    return float(fraction)


def recording_of(line: str) -> tuple[str, int]:
    """(source recording, piece number) of a filelist line: pieces are named SOURCE_K (arvc and RVC)."""
    stem = Path(line.split("|", 1)[0].strip()).stem
    source, _, number = stem.rpartition("_")
    if source and number.isdigit():
        return source, int(number)
    return stem, 0


def split_pieces(
    lines: list[str],
    fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    *,
    minimum: int = MIN_HELD_PIECES,
    cap: int = MAX_HELD_PIECES,
) -> Split:
    """Hold out about `fraction` of the pieces (at least `minimum`, at most `cap`), seeded.

    Whole recordings when the dataset has several and some draw of them (in seeded order, taken until
    enough) holds out at most twice the target and at most `cap`; otherwise one contiguous block of pieces
    of one recording (seeded choice of recording and start). Raises DataError when the dataset is too small
    to spare `minimum` pieces and still train on at least as many as it holds out.
    """
    fraction = check_fraction(fraction)
    lines = [line for line in lines if line.strip()]
    if fraction == 0:
        return Split(lines, [], "no validation (--val-fraction 0)", 0.0, seed)
    n = len(lines)
    target = min(cap, max(minimum, round(fraction * n)))
    if n < 2 * max(minimum, target):
        raise DataError(
            f"{n} pieces are too few to hold {target} out for validation and train on the rest; add "
            "recordings, or train without validation (--val-fraction 0)"
        )
    recordings: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        recordings.setdefault(recording_of(line)[0], []).append(index)
    for indices in recordings.values():
        indices.sort(key=lambda i: recording_of(lines[i])[1])
    rng = random.Random(seed)

    if len(recordings) > 1:
        order = sorted(recordings)
        rng.shuffle(order)
        held: list[int] = []
        taken = []
        for name in order:
            if len(held) >= target:
                break
            held += recordings[name]
            taken.append(name)
        if len(held) <= min(cap, 2 * target) and n - len(held) >= len(held):
            how = (
                f"held out {len(held)} of {n} pieces for validation: {len(taken)} whole recording(s) of "
                f"{len(recordings)} ({', '.join(taken)}), never trained on"
            )
            return _make(lines, set(held), how, fraction, seed)

    # One recording, or recordings too long to hold one out whole: one contiguous block of pieces.
    candidates = sorted(name for name, indices in recordings.items() if len(indices) >= target)
    if not candidates:  # many short recordings, none long enough: the seeded draw of pieces is the best
        chosen = rng.sample(range(n), target)
        how = (
            f"held out {target} of {n} pieces for validation, drawn at random (no recording could be held "
            "out whole or as a block); their neighbours in time are trained on, so validation is optimistic"
        )
        return _make(lines, set(chosen), how, fraction, seed)
    name = rng.choice(candidates)
    indices = recordings[name]
    start = rng.randrange(len(indices) - target + 1)
    block = indices[start : start + target]
    why = (
        "the dataset is one recording"
        if len(recordings) == 1
        else "its recordings are too long to hold one out"
    )
    how = (
        f"held out {target} of {n} pieces for validation: {why}, so one contiguous block of {name} "
        f"(pieces {recording_of(lines[block[0]])[1]}-{recording_of(lines[block[-1]])[1]}); only its two "
        "edges overlap training pieces in time"
    )
    return _make(lines, set(block), how, fraction, seed)


def _make(lines: list[str], held: set[int], how: str, fraction: float, seed: int) -> Split:
    train = [line for i, line in enumerate(lines) if i not in held]
    return Split(train, [line for i, line in enumerate(lines) if i in held], how, fraction, seed)


def write_split(split: Split, path: Path) -> None:
    """Record the split (atomically) so that a resumed run validates on the same pieces."""
    write_text(Path(path), json.dumps(split.to_dict(), indent=1))


def read_split(path: Path) -> Split:
    try:
        data = json.loads(Path(path).read_text())
        return Split(
            list(data["train"]), list(data["held"]), str(data["how"]), data["fraction"], data["seed"]
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"the run's validation split {path} is unreadable ({error})") from error
