import importlib.util

import numpy as np
import pytest

from arvc.audio import features
from arvc.audio.features import MelFeatures, get_extractor

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def _wave(seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def test_mel_features_shape_rate_and_normalisation():
    ext = get_extractor("mel", 80)
    feats = ext(_wave(2.0))
    assert feats.shape == (100, 80) and feats.dtype == np.float32  # 50 frames/s
    np.testing.assert_allclose(feats.mean(axis=0), 0.0, atol=1e-4)
    assert np.all(feats.std(axis=0) <= 1.0 + 1e-4)


def test_mel_features_deterministic_and_loudness_invariant():
    ext = MelFeatures(48)
    a = ext(_wave())
    np.testing.assert_array_equal(a, ext(_wave()))
    np.testing.assert_allclose(a, ext(_wave() * 0.25), atol=1e-2)


def test_mel_features_short_and_silent_inputs():
    ext = MelFeatures(16)
    assert ext(np.zeros(100, np.float32)).shape == (0, 16)
    short = ext(_wave(0.05))
    assert short.shape == (2, 16) and np.isfinite(short).all()
    assert np.isfinite(ext(np.zeros(16000, np.float32))).all()


def test_unknown_extractor_and_missing_hubert_path():
    with pytest.raises(ValueError, match="mel, hubert"):
        get_extractor("wav2vec", 768)
    with pytest.raises(ValueError, match="hubert_path"):
        get_extractor("hubert", 768)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        get_extractor("hubert", 768, hubert_path="/nonexistent/hubert")


def test_hubert_rejects_fairseq_checkpoint_file(tmp_path):
    ckpt = tmp_path / "hubert_base.pt"
    ckpt.write_bytes(b"\0")
    with pytest.raises(FileNotFoundError, match="converted"):
        get_extractor("hubert", 768, hubert_path=ckpt)


def test_hubert_without_transformers_names_the_extra(tmp_path, block_import):
    (tmp_path / "config.json").write_text("{}")
    block_import("transformers")
    with pytest.raises(ImportError, match=r"arvc\[hubert\]"):
        features.HubertFeatures(tmp_path, 768)


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    path = tmp_path_factory.mktemp("hubert")
    transformers.HubertModel(config).save_pretrained(path)
    return path


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (arvc[hubert]) not installed")
def test_hubert_features_from_local_dir(tiny_hubert):
    ext = get_extractor("hubert", 32, hubert_path=tiny_hubert)
    feats = ext(_wave(1.0))
    assert feats.dtype == np.float32 and feats.shape == (49, 32)  # (16000 - 400) // 320 + 1
    np.testing.assert_array_equal(feats, ext(_wave(1.0)))
    assert ext(np.zeros(200, np.float32)).shape == (0, 32)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (arvc[hubert]) not installed")
def test_hubert_dim_mismatch_is_explained(tiny_hubert):
    with pytest.raises(ValueError, match="feature_dim=768"):
        get_extractor("hubert", 768, hubert_path=tiny_hubert)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (arvc[hubert]) not installed")
def test_preprocess_with_hubert_features(tiny_hubert, tmp_path):
    from arvc.data.demo import generate_demo_voice
    from arvc.data.preprocess import preprocess

    generate_demo_voice(tmp_path / "demo", seconds=4, sr=16000)
    result = preprocess(
        tmp_path / "demo",
        tmp_path / "run",
        16000,
        "pm",
        features="hubert",
        feature_dim=32,
        hubert_path=tiny_hubert,
    )
    feature = tmp_path / "run" / result.filelist.read_text().split("|")[1]
    feats = np.load(feature)
    assert feats.ndim == 2 and feats.shape[1] == 32 and len(feats) > 20
