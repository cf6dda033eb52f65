"""RVC WebUI's hubert_base.pt (fairseq) without fairseq: a small fairseq-layout checkpoint with random
weights, built here with the configuration objects such files hold, converts to a Hugging Face model that
equals the one built from the same weights; a pickle that needs code is refused."""

import argparse
import enum
import os
import sys
import types

import numpy as np
import pytest
import torch

from arvc.audio.fairseq_hubert import FairseqError, convert_fairseq_hubert, read_fairseq_checkpoint
from arvc.audio.features import get_extractor

transformers = pytest.importorskip("transformers")

# HF name -> fairseq name, written out independently of the converter
_TO_FAIRSEQ = [
    (r"masked_spec_embed", "mask_emb"),
    (r"feature_extractor.conv_layers.(\d+).conv.", r"feature_extractor.conv_layers.\1.0."),
    (r"feature_extractor.conv_layers.(\d+).layer_norm.", r"feature_extractor.conv_layers.\1.2."),
    (r"feature_projection.projection.", "post_extract_proj."),
    (r"feature_projection.layer_norm.", "layer_norm."),
    (r"encoder.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv.0.weight_g"),
    (r"encoder.pos_conv_embed.conv.parametrizations.weight.original1", "encoder.pos_conv.0.weight_v"),
    (r"encoder.pos_conv_embed.conv.bias", "encoder.pos_conv.0.bias"),
    (r"encoder.layers.(\d+).attention.", r"encoder.layers.\1.self_attn."),
    (r"encoder.layers.(\d+).layer_norm.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder.layers.(\d+).feed_forward.intermediate_dense.", r"encoder.layers.\1.fc1."),
    (r"encoder.layers.(\d+).feed_forward.output_dense.", r"encoder.layers.\1.fc2."),
]


def _fairseq_name(name: str) -> str:
    import re

    for pattern, replacement in _TO_FAIRSEQ:
        name, n = re.subn("^" + pattern.replace(".", r"\.").replace(r"(\d+)", r"(\d+)"), replacement, name)
        if n:
            return name
    return name


@pytest.fixture()
def fake_config_modules(monkeypatch):
    """Classes under fairseq's and omegaconf's module names, as a real checkpoint's pickle names them."""
    fairseq = types.ModuleType("fairseq.dataclass.constants")

    class ChoiceEnum(str, enum.Enum):
        DEFAULT = "default"

    ChoiceEnum.__module__, ChoiceEnum.__qualname__ = fairseq.__name__, "ChoiceEnum"
    fairseq.ChoiceEnum = ChoiceEnum
    omegaconf = types.ModuleType("omegaconf.dictconfig")

    class DictConfig:
        def __init__(self, content):
            self.content = content

        def __getstate__(self):
            return {"_content": self.content, "_metadata": None, "_parent": None}

    DictConfig.__module__, DictConfig.__qualname__ = omegaconf.__name__, "DictConfig"
    omegaconf.DictConfig = DictConfig
    for module in (fairseq, omegaconf):  # with their parent packages, so pickle can import them
        parts = module.__name__.split(".")
        for i in range(1, len(parts)):
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return ChoiceEnum, DictConfig


@pytest.fixture()
def checkpoint(tmp_path, fake_config_modules):
    ChoiceEnum, DictConfig = fake_config_modules

    class WithFinalProj(transformers.HubertModel):
        def __init__(self, config):
            super().__init__(config)
            self.final_proj = torch.nn.Linear(config.hidden_size, config.classifier_proj_size)

    settings = {
        "encoder_embed_dim": 32, "encoder_layers": 3, "encoder_attention_heads": 2,
        "encoder_ffn_embed_dim": 64, "conv_feature_layers": "[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2",
        "conv_pos": 16,
        "conv_pos_groups": 2, "final_dim": 8, "extractor_mode": ChoiceEnum.DEFAULT, "layer_norm_first": False,
        "activation_fn": "gelu",
    }  # fmt: skip
    config = transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, classifier_proj_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = WithFinalProj(config).eval()
    model = {_fairseq_name(k): v.clone() for k, v in reference.state_dict().items()}
    model["label_embs_concat"] = torch.zeros(504, 8)  # training-only, as in hubert_base.pt
    state = {
        "args": None,
        "cfg": DictConfig({"model": DictConfig(settings), "task": argparse.Namespace(sample_rate=16000)}),
        "model": model,
        "optimizer_history": [{"num_updates": 400000}],
    }
    path = tmp_path / "hubert_base.pt"
    torch.save(state, path)
    return path, reference


def test_a_fairseq_checkpoint_reads_as_plain_data(checkpoint):
    path, _ = checkpoint
    state = read_fairseq_checkpoint(path)
    assert state["cfg"]["model"]["extractor_mode"] == "default"  # an enum becomes its value
    assert state["cfg"]["task"] == {"sample_rate": 16000}  # a Namespace becomes a dict
    assert isinstance(state["model"]["mask_emb"], torch.Tensor)


def test_converts_to_the_model_built_from_the_same_weights(checkpoint, tmp_path, monkeypatch):
    path, reference = checkpoint
    monkeypatch.setenv("ARVC_CACHE_DIR", str(tmp_path / "cache"))
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    with torch.inference_mode():
        states = reference(torch.from_numpy(wave)[None], output_hidden_states=True).hidden_states
        projected = reference.final_proj(states[3])[0].numpy()
    v2 = get_extractor("hubert", 32, hubert_path=path)(wave)  # the .pt file itself, as users pass it
    np.testing.assert_allclose(v2, states[-1][0].numpy(), rtol=1e-5, atol=1e-6)
    # through final_proj (v1-style; this small model has 3 layers, so the layer is named)
    v1 = get_extractor("hubert", 8, hubert_path=path, layer=3)(wave)
    np.testing.assert_allclose(v1, projected, rtol=1e-5, atol=1e-6)
    (folder,) = (tmp_path / "cache" / "hubert").iterdir()
    assert (folder / "model.safetensors").is_file(), "converted once, cached as safetensors"
    assert convert_fairseq_hubert(path, tmp_path / "cache" / "hubert") == folder  # reused, not redone


def test_a_pickle_that_needs_code_is_refused_before_it_runs(tmp_path, monkeypatch):
    evil = types.ModuleType("evilpayload")

    def payload(*args):  # pragma: no cover - must never run
        raise AssertionError("the pickle's code ran")

    payload.__module__ = evil.__name__
    payload.__qualname__ = "payload"
    evil.payload = payload
    monkeypatch.setitem(sys.modules, evil.__name__, evil)

    class Trap:
        def __reduce__(self):
            return (payload, ("rm -rf ~",))

    torch.save({"model": {"mask_emb": torch.zeros(2)}, "cfg": Trap()}, tmp_path / "trap.pt")
    with pytest.raises(FairseqError, match=r"would need code to load \(evilpayload.payload\)"):
        read_fairseq_checkpoint(tmp_path / "trap.pt")
    torch.save({"model": {"mask_emb": torch.zeros(2)}, "cfg": os.system}, tmp_path / "system.pt")
    with pytest.raises(FairseqError, match="never runs code"):
        read_fairseq_checkpoint(tmp_path / "system.pt")

    # Under an allowed module's name, reached through it: argparse imports os as _os. It was read, with a
    # placeholder in its place (nothing ran), where the docs say such a pickle is refused.
    def system(*args):  # pragma: no cover - must never run
        raise AssertionError("the pickle's code ran")

    system.__module__, system.__qualname__ = "argparse._os", "system"
    with monkeypatch.context() as patch:  # pickle checks that argparse._os.system is this very function
        patch.setitem(sys.modules, "argparse._os", os)
        patch.setattr(os, "system", system)
        torch.save({"model": {"mask_emb": torch.zeros(2)}, "cfg": system}, tmp_path / "through.pt")
    assert "argparse._os.system" in torch.serialization.get_unsafe_globals_in_checkpoint(
        tmp_path / "through.pt"
    )
    with pytest.raises(
        FairseqError, match=r"argparse\._os\.system.*not a configuration class.*never runs code"
    ):
        read_fairseq_checkpoint(tmp_path / "through.pt")
    torch.save({"model": {"encoder.nope.weight": torch.zeros(2)}}, tmp_path / "odd.pt")
    with pytest.raises(FairseqError, match="unknown fairseq HuBERT weight encoder.nope.weight"):
        convert_fairseq_hubert(tmp_path / "odd.pt", tmp_path / "cache")
