"""Training dataset over a preprocessed run directory, as RVC's TextAudioLoaderMultiNSFsid.

Each item pairs a target wave and its linear spectrogram (100 frames/s at the model's hop)
with content features (stored at 50 frames/s, repeated twice to 100 frames/s) and pitch.
All streams are cut to their common length, capped at 900 frames like RVC. Batches come out
as :class:`Batch`, in RVC's argument order for the synthesizer.

Shuffling is reproducible and resumable: :class:`EpochSampler` draws epoch ``k``'s order from
``(seed, k)`` alone, so a resumed run replays exactly the order it would have seen. In a multi-process
run it hands each rank its share of every global batch, so global batch ``j`` holds the same pieces for any
number of processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from arvc._files import atomic_file
from arvc.audio.mel import linear_spectrogram
from arvc.data.preprocess import FILELIST, DataError

__all__ = ["MAX_FRAMES", "Batch", "EpochSampler", "Item", "VoiceDataset", "collate", "make_loader"]

log = logging.getLogger(__name__)

MAX_FRAMES = 900  # RVC caps each item at 900 frames (9 s at 100 frames/s)


class Item(NamedTuple):
    """One aligned training example (unbatched)."""

    phone: torch.Tensor  # [T, C] float
    pitch: torch.Tensor  # [T] long, coarse 1..255
    pitchf: torch.Tensor  # [T] float, Hz
    spec: torch.Tensor  # [n_fft // 2 + 1, T] float
    wave: torch.Tensor  # [1, T * hop] float
    sid: int
    index: int = -1  # position in the dataset (keys the item's training noise, see model/noise.py)


class Batch(NamedTuple):
    """A zero-padded batch, fields in the order RVC's synthesizer and losses take them."""

    phone: torch.Tensor  # [B, T, C] float
    phone_lengths: torch.Tensor  # [B] long
    pitch: torch.Tensor  # [B, T] long
    pitchf: torch.Tensor  # [B, T] float
    spec: torch.Tensor  # [B, n_fft // 2 + 1, T] float
    spec_lengths: torch.Tensor  # [B] long
    wave: torch.Tensor  # [B, 1, T * hop] float
    wave_lengths: torch.Tensor  # [B] long
    sid: torch.Tensor  # [B] long
    index: torch.Tensor  # [B] long, dataset index of each row

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move every tensor to ``device``."""
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))

    def split(self, parts: int) -> list[Batch]:
        """`parts` equal micro-batches of consecutive rows (gradient accumulation), each zero-padded only to
        its own longest item, as if collated alone (the model's output per item does not depend on it)."""
        size = self.index.numel()
        if parts == 1:
            return [self]
        if size % parts:
            raise ValueError(f"a batch of {size} cannot be split into {parts} equal micro-batches")
        step = size // parts
        out = []
        for start in range(0, size, step):
            rows = slice(start, start + step)
            frames = int(max(self.spec_lengths[rows].max(), self.phone_lengths[rows].max()))
            samples = int(self.wave_lengths[rows].max())
            out.append(
                Batch(
                    self.phone[rows, :frames],
                    self.phone_lengths[rows],
                    self.pitch[rows, :frames],
                    self.pitchf[rows, :frames],
                    self.spec[rows, :, :frames],
                    self.spec_lengths[rows],
                    self.wave[rows, :, :samples],
                    self.wave_lengths[rows],
                    self.sid[rows],
                    self.index[rows],
                )
            )
        return out


class VoiceDataset(Dataset):
    """Reads ``run_dir/filelist.txt`` (gt_wav|feature|f0|f0nsf|speaker_id).

    ``data_cfg`` needs sampling_rate, filter_length, hop_length, win_length and feature_dim.
    Spectrograms are computed once and cached next to each wave as ``NAME.spec.pt`` (as RVC
    does) when ``cache_spec`` is true; a cache that no longer matches the wave or the config's
    framing is recomputed.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        data_cfg: Any,
        filelist: str | os.PathLike | None = None,
        max_frames: int = MAX_FRAMES,
        cache_spec: bool = True,
        lines: list[str] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.cfg = data_cfg
        self.max_frames = int(max_frames)
        self.cache_spec = cache_spec
        path = Path(filelist) if filelist is not None else self.run_dir / FILELIST
        if lines is None:  # `lines`: a part of `path`'s lines (a validation split); paths still from run_dir
            if not path.is_file():
                raise DataError(f"{path} not found; run preprocessing for this run directory first")
            lines = path.read_text().splitlines()
        self.entries = [self._parse(line, path, n) for n, line in enumerate(lines, 1) if line.strip()]
        if not self.entries:
            raise DataError(f"{path} lists no training pieces; re-run preprocessing")
        missing = [str(p) for entry in self.entries for p in entry[:4] if not p.is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} file(s) listed in {path} are missing (e.g. {missing[0]}); "
                "re-run preprocessing"
            )
        # Spectrogram frames per item from the header only, for length-aware batching and reports.
        self.lengths = []
        for entry in self.entries:
            info = sf.info(str(entry[0]))
            if info.samplerate != self.cfg.sampling_rate:
                raise DataError(self._rate_message(entry[0], info.samplerate))
            self.lengths.append(min(info.frames // self.cfg.hop_length, self.max_frames))

    def _rate_message(self, path: Path, sr: int) -> str:
        return (
            f"{path} is at {sr} Hz but the config trains at {self.cfg.sampling_rate} Hz; "
            "re-run preprocessing with the config's sample rate"
        )

    def _parse(self, line: str, source: Path, number: int) -> tuple[Path, Path, Path, Path, int]:
        fields = line.strip().split("|")
        if len(fields) != 5:
            raise DataError(f"{source}:{number}: expected gt_wav|feature|f0|f0nsf|speaker_id, got {line!r}")
        paths = [Path(f) if Path(f).is_absolute() else self.run_dir / f for f in fields[:4]]
        try:
            sid = int(fields[4])
        except ValueError as exc:
            raise DataError(f"{source}:{number}: speaker id {fields[4]!r} is not an integer") from exc
        return paths[0], paths[1], paths[2], paths[3], sid

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Item:
        gt, feature, f0, f0nsf, sid = self.entries[index]
        wave = self._load_wave(gt)
        spec = self._spectrogram(gt, wave)
        phone = np.load(feature)
        if phone.ndim != 2 or phone.shape[1] != self.cfg.feature_dim:
            raise DataError(
                f"{feature} holds features of shape {phone.shape} but the config expects feature_dim="
                f"{self.cfg.feature_dim}; re-run preprocessing with matching content features"
            )
        phone = np.repeat(phone, 2, axis=0)  # 50 -> 100 frames/s, the spectrogram's rate
        pitch, pitchf = np.load(f0), np.load(f0nsf)
        n = min(len(phone), spec.shape[1], len(pitch), len(pitchf), self.max_frames)
        hop = self.cfg.hop_length
        return Item(
            phone=torch.from_numpy(np.ascontiguousarray(phone[:n], dtype=np.float32)),
            pitch=torch.from_numpy(np.asarray(pitch[:n], dtype=np.int64)),
            pitchf=torch.from_numpy(np.asarray(pitchf[:n], dtype=np.float32)),
            spec=spec[:, :n].contiguous(),
            wave=wave[:, : n * hop].contiguous(),
            sid=sid,
            index=int(index),
        )

    def _load_wave(self, path: Path) -> torch.Tensor:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        if sr != self.cfg.sampling_rate:
            raise DataError(self._rate_message(path, sr))
        return torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]).unsqueeze(0)

    def _spectrogram(self, gt: Path, wave: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        bins, frames = cfg.filter_length // 2 + 1, wave.size(1) // cfg.hop_length
        cache = gt.with_suffix(".spec.pt")
        if self.cache_spec and cache.is_file() and cache.stat().st_mtime_ns >= gt.stat().st_mtime_ns:
            try:
                spec = torch.load(cache, map_location="cpu", weights_only=True)
                if isinstance(spec, torch.Tensor) and tuple(spec.shape) == (bins, frames):
                    return spec
            except Exception as exc:  # a damaged cache is only a cache
                log.debug("ignoring unreadable %s: %s", cache, exc)
        spec = linear_spectrogram(wave, cfg.filter_length, cfg.hop_length, cfg.win_length)[0]
        if self.cache_spec:
            try:
                with atomic_file(cache) as temporary, open(temporary, "wb") as handle:
                    torch.save(spec, handle)
            except OSError as exc:  # read-only run dir: fine, just slower
                log.debug("could not cache %s: %s", cache, exc)
        return spec


def collate(batch: Sequence[Item]) -> Batch:
    """Zero-pad items into a :class:`Batch`, longest first (as RVC's TextAudioCollateMultiNSFsid)."""
    items = sorted(batch, key=lambda it: it.spec.size(1), reverse=True)
    size = len(items)
    max_t = max(it.spec.size(1) for it in items)
    max_wave = max(it.wave.size(1) for it in items)
    phone = torch.zeros(size, max_t, items[0].phone.size(1))
    pitch = torch.zeros(size, max_t, dtype=torch.long)
    pitchf = torch.zeros(size, max_t)
    spec = torch.zeros(size, items[0].spec.size(0), max_t)
    wave = torch.zeros(size, 1, max_wave)
    phone_lengths, spec_lengths, wave_lengths, sid, index = (
        torch.zeros(size, dtype=torch.long) for _ in range(5)
    )
    for i, it in enumerate(items):
        t = it.phone.size(0)
        phone[i, :t], pitch[i, :t], pitchf[i, :t] = it.phone, it.pitch, it.pitchf
        spec[i, :, : it.spec.size(1)] = it.spec
        wave[i, :, : it.wave.size(1)] = it.wave
        phone_lengths[i], spec_lengths[i], wave_lengths[i] = t, it.spec.size(1), it.wave.size(1)
        sid[i], index[i] = it.sid, it.index
    return Batch(phone, phone_lengths, pitch, pitchf, spec, spec_lengths, wave, wave_lengths, sid, index)


class EpochSampler(Sampler[int]):
    """Index order that is a pure function of ``(seed, epoch)``: reproducible and resumable.

    Call :meth:`set_epoch` before iterating; ``start`` skips the first indices of that epoch's
    order, to resume in the middle of an epoch.

    With ``world_size > 1`` (``batch_size`` = the global batch), rank ``r`` yields, for every complete
    global batch ``order[j*B:(j+1)*B]``, its slice ``[r*B/W:(r+1)*B/W]``; an incomplete last global batch
    is dropped, and ``start`` (in pieces, a multiple of ``B``) counts global batches already done.
    """

    def __init__(
        self,
        n: int,
        shuffle: bool = True,
        seed: int = 0,
        batch_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.n, self.shuffle, self.seed = int(n), shuffle, int(seed)
        self.epoch, self.start = 0, 0
        self.rank, self.world_size = int(rank), int(world_size)
        if self.world_size > 1:
            if batch_size is None or batch_size % self.world_size:
                raise ValueError(
                    f"global batch size {batch_size} must be divisible by the {world_size} processes"
                )
            if not 0 <= self.rank < self.world_size:
                raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.batch_size = batch_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> list[int]:
        """The full index order of ``epoch``."""
        if not self.shuffle:
            return list(range(self.n))
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        if self.world_size == 1:
            return iter(order[self.start :])
        return iter(order[i] for i in self._positions())

    def _positions(self) -> list[int]:
        """This rank's positions in the epoch's order, global batch after global batch."""
        size, share = self.batch_size, self.batch_size // self.world_size
        first = self.rank * share
        return [j * size + first + i for j in range(self.start // size, self.n // size) for i in range(share)]

    def __len__(self) -> int:
        return self.n - self.start if self.world_size == 1 else len(self._positions())


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """DataLoader with :func:`collate` and an :class:`EpochSampler` (``loader.sampler.set_epoch(k)``).

    ``batch_size`` is the global batch: with ``world_size`` processes each loads ``batch_size /
    world_size`` pieces per step (its share of the same global batch a single process would load).
    """
    n = len(dataset)
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if batch_size % world_size:
        raise DataError(
            f"batch size {batch_size} cannot be split evenly over {world_size} processes (the batch size "
            f"is the global batch, each process takes batch/processes); use a multiple of {world_size}"
        )
    if batch_size > n:
        raise DataError(
            f"batch size {batch_size} is larger than the dataset ({n} pieces); lower the batch size "
            "or add more audio"
        )
    generator = torch.Generator().manual_seed(int(seed))  # seeds worker processes reproducibly
    return DataLoader(
        dataset,
        batch_size=batch_size // world_size,
        sampler=EpochSampler(n, shuffle, seed, batch_size, rank, world_size),
        collate_fn=collate,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
    )
