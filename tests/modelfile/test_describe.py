"""describe_model_file: one JSON-ready answer per model format."""

from __future__ import annotations

import json

import pytest
import torch

from arvc.config import load_config, rvc_config_list
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.modelfile.describe import describe_model_file
from arvc.modelfile.export import export_generator
from arvc.modelfile.read import PretrainedError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of every kind, all from the same tiny models."""
    folder = tmp_path_factory.mktemp("models")
    cfg = load_config("tiny")
    torch.manual_seed(0)
    net_g, net_d = Synthesizer(cfg), MultiPeriodDiscriminator(cfg)
    export_generator(net_g, cfg, folder / "export", info="arvc AdamW epoch 3")
    hp = {"optimizer": "RAdam", "lr": 2e-3, "betas": (0.8, 0.99), "eps": 1e-9, "weight_decay": None}
    torch.save(
        {
            "format": "arvc-checkpoint",
            "version": 1,
            "epoch": 3,
            "step": 42,
            "config": cfg.to_dict(),
            "generator": net_g.state_dict(),
            "discriminator": net_d.state_dict(),
            "optim_g": {"name": "RAdam", "hyperparameters": hp, "state": {}},
            "optim_d": {"name": "RAdam", "hyperparameters": hp, "state": {}},
            "precision": "fp32",
            "device": "cuda:0",
            "device_name": "NVIDIA GeForce RTX 4070",
        },
        folder / "ckpt.pt",
    )
    torch.save({"model": net_d.state_dict(), "iteration": 12, "learning_rate": 1e-4}, folder / "D_12.pth")
    weights = {k: v.half() for k, v in net_g.state_dict().items() if not k.startswith("enc_q.")}
    rvc = {
        "weight": weights,
        "config": rvc_config_list(cfg),
        "sr": 16000,
        "f0": 1,
        "version": "v2",
        "info": "1ep",
    }
    torch.save(rvc, folder / "voice.pth")
    return folder, net_g, net_d


def test_arvc_export(files):
    folder, net_g, _ = files
    info = describe_model_file(folder / "export" / "model.safetensors")
    n_inference = sum(v.numel() for k, v in net_g.state_dict().items() if not k.startswith("enc_q."))
    assert info["format"] == "arvc-export" and info["parameters"] == n_inference
    assert (info["version"], info["sample_rate"], info["f0"], info["config"]) == ("v2", 16000, 1, "tiny")
    assert info["has_enc_q"] is False
    assert describe_model_file(folder / "export" / "model.json")["info"] == "arvc AdamW epoch 3"
    assert describe_model_file(folder / "export")["format"] == "arvc-export"  # the folder works too


def test_arvc_checkpoint_reports_training_state(files):
    folder, net_g, net_d = files
    info = describe_model_file(folder / "ckpt.pt")
    assert info["format"] == "arvc-checkpoint" and info["contents"] == ["generator", "discriminator"]
    assert (info["optimizer"], info["epoch"], info["step"], info["precision"]) == ("RAdam", 3, 42, "fp32")
    assert info["device"] == "cuda:0 (NVIDIA GeForce RTX 4070)"  # where it was trained
    assert info["hyperparameters"]["lr"] == 2e-3 and info["hyperparameters"]["betas"] == [0.8, 0.99]
    total = sum(v.numel() for m in (net_g, net_d) for v in m.state_dict().values())
    assert info["parameters"] == total and info["has_enc_q"] is True
    json.dumps(info)  # plain data all the way down


def test_rvc_files(files):
    folder, _, _ = files
    d = describe_model_file(folder / "D_12.pth")
    assert (d["format"], d["contents"], d["version"], d["epoch"]) == (
        "rvc-train",
        ["discriminator"],
        "v2",
        12,
    )
    assert d["sample_rate"] is None and d["f0"] is None and d["hyperparameters"] == {"lr": 1e-4}
    g = describe_model_file(folder / "voice.pth")
    assert (g["format"], g["sample_rate"], g["f0"], g["version"], g["dtype"]) == (
        "rvc-inference",
        16000,
        1,
        "v2",
        "float16",
    )
    assert g["feature_dim"] == 80 and g["info"] == "1ep"


def test_not_a_model(tmp_path):
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(PretrainedError, match="not an arvc model.json"):
        describe_model_file(tmp_path / "notes.json")
