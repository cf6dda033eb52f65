"""The retrieval index: built like RVC's train_index, readable by faiss, checked on load, blended like RVC."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import arvc.infer.index as index_module
from arvc.infer.index import FeatureIndexError, blend_features, build_index, ivf_lists, load_index

faiss = pytest.importorskip("faiss")


def _run(tmp_path, sizes, dim=80, seed=0):
    """A run folder with preprocessed features (and the config/manifest a real run has)."""
    run = tmp_path / "alice"
    folder = run / "data" / "3_feature"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, n in enumerate(sizes):
        np.save(folder / f"piece_{i}.npy", rng.standard_normal((n, dim)).astype(np.float32))
    (run / "config.json").write_text(json.dumps({"name": "tiny", "data": {"sampling_rate": 16000}}))
    (run / "data" / "preprocess.json").write_text(json.dumps({"features": "mel", "sample_rate": 16000}))
    return run


def test_ivf_list_count_follows_rvc():
    assert ivf_lists(2000) == min(int(16 * np.sqrt(2000)), 2000 // 39) == 51
    assert ivf_lists(100_000) == 2564
    assert ivf_lists(50) == 1


def test_build_writes_an_ivf_index_rvc_tools_can_read(tmp_path):
    run = _run(tmp_path, [700, 800, 500])
    path = build_index(run)
    assert path == run / "export" / "added.index"
    index = faiss.read_index(str(path))
    assert (index.d, index.ntotal) == (80, 2000)
    assert faiss.extract_index_ivf(index).nlist == 51 and faiss.extract_index_ivf(index).nprobe == 1
    meta = json.loads((run / "export" / "added.index.json").read_text())
    assert meta["factory"] == "IVF51,Flat" and meta["sample_rate"] == 16000 and meta["features"] == "mel"
    loaded = load_index(path, 80, 16000)
    assert loaded.vectors.shape == (2000, 80) and loaded.dim == 80
    # every training frame is in the index
    frames = np.concatenate([np.load(p) for p in sorted((run / "data" / "3_feature").glob("*.npy"))])
    assert np.array_equal(np.sort(loaded.vectors, axis=0), np.sort(frames, axis=0))


def test_small_sets_get_an_exact_flat_index(tmp_path):
    path = build_index(_run(tmp_path, [30, 20]))
    assert isinstance(faiss.read_index(str(path)), faiss.IndexFlat)
    assert json.loads(path.with_name("added.index.json").read_text())["factory"] == "Flat"


def test_large_sets_are_reduced_to_centroids(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "KMEANS_ABOVE", 1000)
    monkeypatch.setattr(index_module, "KMEANS_CENTROIDS", 100)
    path = build_index(_run(tmp_path, [2000, 2000]))
    meta = json.loads(path.with_name("added.index.json").read_text())
    assert (meta["n_frames"], meta["n_vectors"], meta["factory"]) == (4000, 100, "IVF2,Flat")


def test_build_errors(tmp_path):
    with pytest.raises(FeatureIndexError, match="does not exist"):
        build_index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureIndexError, match="no content features.*preprocess"):
        build_index(tmp_path / "empty")
    run = _run(tmp_path, [100])
    np.save(run / "data" / "3_feature" / "other.npy", np.zeros((10, 768), dtype=np.float32))
    with pytest.raises(FeatureIndexError, match=r"different sizes \[80, 768\]"):
        build_index(run)


def test_load_errors(tmp_path):
    path = build_index(_run(tmp_path, [100]))
    with pytest.raises(FeatureIndexError, match="indexes 80-d features .mel. but the model uses 768-d"):
        load_index(path, 768)
    with pytest.raises(FeatureIndexError, match="does not exist.*arvc index"):
        load_index(tmp_path / "missing.index", 80)
    (tmp_path / "junk.index").write_bytes(b"junk" * 10)
    with pytest.raises(FeatureIndexError, match="not a faiss index"):
        load_index(tmp_path / "junk.index", 80)


def test_missing_faiss_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"pip install 'arvc\[index\]'"):
        build_index(tmp_path)


def test_blending_is_rvcs_inverse_square_weighting(tmp_path):
    loaded = load_index(build_index(_run(tmp_path, [30])), 80)  # Flat: exact neighbours
    query = np.random.default_rng(5).standard_normal((6, 80)).astype(np.float32)
    assert np.array_equal(blend_features(query, loaded, 0.0), query)
    scores, ids = loaded.index.search(query, 8)
    weights = np.square(1 / scores)
    weights /= weights.sum(axis=1, keepdims=True)
    retrieved = np.sum(loaded.vectors[ids] * weights[:, :, None], axis=1)
    expected = 0.3 * retrieved + 0.7 * query
    np.testing.assert_allclose(blend_features(query, loaded, 0.3), expected, rtol=1e-4, atol=1e-5)
    # a frame that is in the index pulls (almost) entirely to itself
    np.testing.assert_allclose(blend_features(loaded.vectors[:3], loaded, 1.0), loaded.vectors[:3], atol=1e-5)
