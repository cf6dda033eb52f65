"""The retrieval index: the training voice's content features, searchable by nearest neighbour.

At conversion time each input feature frame is pulled towards its nearest neighbours among the
training frames (RVC's ``index_rate``), which reduces timbre leaking from the source speaker.
The index is built exactly as RVC's WebUI ``train_index`` does, so RVC WebUI and Applio load it:

* all frames of ``data/3_feature/*.npy`` are shuffled (fixed seed, so a rebuild is identical);
* above 200 000 frames they are replaced by 10 000 k-means centroids (RVC uses sklearn's
  MiniBatchKMeans; arvc uses faiss's own k-means);
* ``n_ivf = min(int(16 * sqrt(n)), n // 39)`` inverted lists, ``"IVF{n_ivf},Flat"``, ``nprobe = 1``
  (39 is faiss's minimum of training points per centroid).  Sets too small for two lists
  (fewer than 78 frames) get an exact ``"Flat"`` index instead; IVF1 would be the same search
  with extra overhead.

It is written to ``runs/RUN/export/added.index`` with ``added.index.json`` beside it, which
records the feature size and sample rate so a mismatched index is caught before conversion.
faiss is the optional extra ``arvc[index]`` (``faiss-cpu``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arvc._files import atomic_file, write_text
from arvc.data.outputs import MANIFEST, RunFolder

__all__ = [
    "FeatureIndex",
    "FeatureIndexError",
    "INDEX_FILENAME",
    "build_index",
    "ivf_lists",
    "load_index",
]

logger = logging.getLogger(__name__)

INDEX_FILENAME = "added.index"
INDEX_FORMAT = "arvc-index"
KMEANS_ABOVE = 200_000  # RVC's threshold for replacing the frames by centroids
KMEANS_CENTROIDS = 10_000
MIN_PER_LIST = 39  # faiss warns below 39 training points per centroid
ADD_BATCH = 8192


class FeatureIndexError(ValueError):
    """An index that cannot be built or used as asked; the message says what to do."""


@dataclass
class FeatureIndex:
    """A loaded index plus the stored vectors that its neighbour ids point into."""

    index: Any
    vectors: np.ndarray
    path: Path
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.index.d)


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "the feature index needs faiss, the optional extra 'index': pip install 'arvc[index]' "
            "(or pip install faiss-cpu)"
        ) from error
    return faiss


def ivf_lists(n: int) -> int:
    """RVC's number of inverted lists for ``n`` vectors; 0 or 1 means an exact Flat index."""
    return min(int(16 * math.sqrt(n)), n // MIN_PER_LIST)


def _read_features(feature_dir: Path) -> np.ndarray:
    files = sorted(feature_dir.glob("*.npy")) if feature_dir.is_dir() else []
    if not files:
        raise FeatureIndexError(
            f"no content features in {feature_dir}; preprocess the run first (arvc preprocess / arvc train)"
        )
    arrays, dims = [], set()
    for path in files:
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise FeatureIndexError(
                f"{path} is not a readable feature file ({error}); re-run preprocessing"
            ) from error
        if array.ndim != 2:
            raise FeatureIndexError(
                f"{path} has shape {array.shape}, expected [frames, dim]; re-run preprocessing"
            )
        dims.add(array.shape[1])
        arrays.append(array.astype(np.float32, copy=False))
    if len(dims) > 1:
        raise FeatureIndexError(
            f"feature files in {feature_dir} have different sizes {sorted(dims)}; re-run preprocessing"
        )
    features = np.concatenate(arrays)
    if not np.isfinite(features).all():
        raise FeatureIndexError(f"features in {feature_dir} contain NaN/inf; re-run preprocessing")
    return features


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def build_index(run_dir: str | os.PathLike) -> Path:
    """Build ``run_dir/export/added.index`` from ``run_dir/data/3_feature/*.npy``; returns its path."""
    from arvc.data.preprocess import STAGE_DIRS  # (the audio stack: only when an index is built)

    faiss = _faiss()
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise FeatureIndexError(f"run folder {run_dir} does not exist; pass runs/NAME of a trained run")
    folder = RunFolder(run_dir)
    features = _read_features(folder.data / STAGE_DIRS["feature"])
    n_frames, dim = features.shape
    features = features[np.random.default_rng(0).permutation(n_frames)]
    if n_frames > KMEANS_ABOVE:
        logger.info("%d feature frames: reducing to %d k-means centroids", n_frames, KMEANS_CENTROIDS)
        kmeans = faiss.Kmeans(dim, KMEANS_CENTROIDS, niter=20, seed=1234)
        kmeans.train(features)
        features = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    n = len(features)
    n_ivf = ivf_lists(n)
    factory = f"IVF{n_ivf},Flat" if n_ivf > 1 else "Flat"
    index = faiss.index_factory(dim, factory)
    if n_ivf > 1:
        faiss.extract_index_ivf(index).nprobe = 1
        index.train(features)
    for start in range(0, n, ADD_BATCH):
        index.add(features[start : start + ADD_BATCH])

    config = _read_json(folder.config)
    settings = _read_json(folder.data / MANIFEST)
    meta = {
        "format": INDEX_FORMAT,
        "feature_dim": dim,
        "sample_rate": (config.get("data") or {}).get("sampling_rate", settings.get("sample_rate")),
        "features": settings.get("features"),
        "factory": factory,
        "nprobe": 1,
        "n_vectors": n,
        "n_frames": n_frames,
        "run": run_dir.name,
    }
    out = folder.export / INDEX_FILENAME
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as temporary:
        faiss.write_index(index, str(temporary))
    meta_path = out.with_name(out.name + ".json")
    write_text(meta_path, json.dumps(meta, indent=2))
    logger.info("index %s: %s over %d vectors of %d dims", out, factory, n, dim)
    return out


def load_index(
    path: str | os.PathLike, expected_dim: int, expected_sample_rate: int | None = None
) -> FeatureIndex:
    """Read an index (arvc's or RVC's) and check it holds ``expected_dim``-sized features."""
    faiss = _faiss()
    path = Path(path).expanduser()
    if not path.is_file():
        raise FeatureIndexError(f"index file {path} does not exist; build one with: arvc index runs/NAME")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FeatureIndexError(f"{path} is not a faiss index file ({first})") from error
    meta = _read_json(path.with_name(path.name + ".json"))
    if index.d != expected_dim:
        kind = {768: "HuBERT (RVC v2)", 256: "RVC v1"}.get(index.d, "mel" if index.d < 256 else "other")
        raise FeatureIndexError(
            f"{path} indexes {index.d}-d features ({kind}) but the model uses {expected_dim}-d features; "
            "use the index built from the same run as the model (arvc index runs/NAME)"
        )
    if expected_sample_rate and meta.get("sample_rate") and meta["sample_rate"] != expected_sample_rate:
        logger.warning(
            "%s was built from a %s Hz run but the model is %s Hz: is it the index of this voice?",
            path,
            meta["sample_rate"],
            expected_sample_rate,
        )
    if index.ntotal == 0:
        raise FeatureIndexError(f"{path} is empty (no vectors); rebuild it with: arvc index runs/NAME")
    vectors = index.reconstruct_n(0, index.ntotal)
    return FeatureIndex(index=index, vectors=np.asarray(vectors, dtype=np.float32), path=path, meta=meta)


def blend_features(features: np.ndarray, index: FeatureIndex, rate: float, k: int = 8) -> np.ndarray:
    """RVC's retrieval: mix each frame with its ``k`` nearest training frames, by ``rate`` (0..1).

    Neighbours are weighted by ``1 / score**2`` where faiss' score is the squared L2 distance,
    exactly as RVC's pipeline does; ids faiss could not fill (-1, too few vectors in the probed
    list) get no weight, and a frame without any neighbour is left as it is.
    """
    if rate <= 0 or len(features) == 0:
        return features
    query = np.ascontiguousarray(features, dtype=np.float32)
    scores, ids = index.index.search(query, min(k, len(index.vectors)))
    valid = ids >= 0
    weights = np.where(valid, 1.0 / np.square(np.maximum(scores.astype(np.float64), 1e-12)), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    found = total[:, 0] > 0
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    retrieved = np.einsum("nk,nkd->nd", weights, index.vectors[np.where(valid, ids, 0)].astype(np.float64))
    mixed = np.where(found[:, None], rate * retrieved + (1.0 - rate) * query, query)
    return mixed.astype(np.float32)
