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


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (arvc[hubert]) not installed")
def test_hubert_file_of_the_wrong_kind_is_a_clear_error(tmp_path, rmvpe_weights):
    ckpt = tmp_path / "hubert_base.pt"
    ckpt.write_bytes(b"\0")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        get_extractor("hubert", 768, hubert_path=ckpt)
    with pytest.raises(
        ValueError, match="is not a fairseq HuBERT checkpoint .*an RMVPE pitch model: pass it as --rmvpe"
    ):
        get_extractor("hubert", 768, hubert_path=rmvpe_weights[0])  # rmvpe.pt given as the content encoder


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


@pytest.fixture(scope="module")
def tiny_contentvec(tmp_path_factory):
    """A 10-layer HuBERT with ContentVec's final_proj (32 -> 8), saved as safetensors and as a .bin folder,
    and the same network without final_proj: the layouts users have."""
    transformers = pytest.importorskip("transformers")
    import torch

    class WithFinalProj(
        transformers.HubertModel
    ):  # the layout of RVC's assets/hubert_base, Applio's contentvec
        def __init__(self, config):
            super().__init__(config)
            self.final_proj = torch.nn.Linear(config.hidden_size, config.classifier_proj_size)

    torch.manual_seed(0)
    config = transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=10, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, classifier_proj_size=8,
    )  # fmt: skip
    model = WithFinalProj(config).eval()
    root = tmp_path_factory.mktemp("contentvec")
    model.save_pretrained(root / "safetensors")
    model.save_pretrained(root / "bin", safe_serialization=False)
    plain = transformers.HubertModel(config)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("final_proj")})
    plain.save_pretrained(root / "plain")
    return root, model


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (arvc[hubert]) not installed")
@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_hubert_layer_follows_the_model_v2_last_v1_ninth_through_final_proj(tiny_contentvec, layout):
    import torch

    root, model = tiny_contentvec
    wave = _wave(1.0)
    with torch.inference_mode():
        states = model(torch.from_numpy(wave)[None], output_hidden_states=True).hidden_states
        v1 = model.final_proj(states[9])[0].numpy()
    v2_features = get_extractor("hubert", 32, hubert_path=root / layout)(wave)  # 768-d in RVC v2: the last
    np.testing.assert_allclose(v2_features, states[10][0].numpy(), rtol=1e-5, atol=1e-6)
    v1_features = get_extractor("hubert", 8, hubert_path=root / layout)(wave)  # 256-d in RVC v1
    np.testing.assert_allclose(v1_features, v1, rtol=1e-5, atol=1e-6)
    third = get_extractor("hubert", 32, hubert_path=root / layout, layer=3)(wave)  # --embedder-layer 3
    np.testing.assert_allclose(third, states[3][0].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (arvc[hubert]) not installed")
def test_hubert_folder_without_final_proj_serves_v2_and_explains_v1(tiny_contentvec):
    root, _ = tiny_contentvec
    assert get_extractor("hubert", 32, hubert_path=root / "plain")(_wave(0.5)).shape[1] == 32
    with pytest.raises(ValueError, match="outputs 32-dim features but the config expects feature_dim=8"):
        get_extractor("hubert", 8, hubert_path=root / "plain")
    with pytest.raises(ValueError, match="has layers 1..10"):
        get_extractor("hubert", 32, hubert_path=root / "plain", layer=11)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (arvc[hubert]) not installed")
def test_hubert_folder_missing_weights_is_an_error_not_random_layers(tiny_contentvec, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    root, _ = tiny_contentvec
    shutil.copytree(root / "plain", tmp_path / "broken")
    weights = load_file(tmp_path / "broken" / "model.safetensors")
    del weights["encoder.layers.3.attention.k_proj.weight"]
    save_file(weights, tmp_path / "broken" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks 1 weights .*encoder.layers.3.attention.k_proj.weight"):
        get_extractor("hubert", 32, hubert_path=tmp_path / "broken")


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (arvc[hubert]) not installed")
def test_embedder_layer_is_recorded_with_the_data_and_kept(tiny_contentvec, tmp_path):
    """Preprocessing with --embedder-layer records it; training reuses it; asking for another is refused."""
    import json

    from arvc.config import apply_overrides, load_config
    from arvc.data.demo import generate_demo_voice
    from arvc.data.prepare import data_settings
    from arvc.data.preprocess import MANIFEST, DataError, preprocess

    root, _ = tiny_contentvec
    generate_demo_voice(tmp_path / "demo", seconds=4, sr=16000)
    data = tmp_path / "run"
    preprocess(tmp_path / "demo", data, 16000, "pm", features="hubert", feature_dim=32,
               hubert_path=root / "plain", embedder_layer=4)  # fmt: skip
    assert json.loads((data / MANIFEST).read_text())["embedder_layer"] == 4
    cfg = apply_overrides(load_config("tiny"), {"data.feature_dim": 32})
    assert data_settings(data, cfg).embedder_layer == 4
    with pytest.raises(DataError, match="come from layer 4 but --embedder-layer 6 was asked for"):
        data_settings(data, cfg, embedder_layer=6)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers (arvc[hubert]) not installed")
def test_a_v1_sized_config_prepares_hubert_features_through_final_proj(tiny_contentvec, tmp_path):
    """A config as narrow as the folder's final_proj (v1: 256 of a 768-wide ContentVec; here 8 of 32) gets
    layer 9 through final_proj. prepare_data refused every width but 768 ("hubert features are 768-d")."""
    from arvc.config import apply_overrides, load_config
    from arvc.data.demo import generate_demo_voice
    from arvc.data.prepare import prepare_data
    from arvc.data.preprocess import DataError

    root, _ = tiny_contentvec
    generate_demo_voice(tmp_path / "demo", seconds=4, sr=16000)
    narrow = apply_overrides(load_config("tiny"), {"data.feature_dim": 8, "data.sampling_rate": 16000})
    result = prepare_data(
        narrow, tmp_path / "run", tmp_path / "demo", features="hubert", hubert_path=root / "safetensors"
    )
    feats = np.load(tmp_path / "run" / "data" / result.filelist.read_text().split("|")[1])
    assert feats.shape[1] == 8
    with pytest.raises(DataError, match="outputs 32-dim features but the config expects feature_dim=8"):
        prepare_data(
            narrow, tmp_path / "run2", tmp_path / "demo", features="hubert", hubert_path=root / "plain"
        )
