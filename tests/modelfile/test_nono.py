"""arvc's generator without pitch guidance (``Synthesizer(cfg, f0=False)``) is RVC's "nono" model.

Checked against RVC's own ``SynthesizerTrnMs768NSFsid_nono`` / ``SynthesizerTrnMs256NSFsid_nono``
through fixtures/rvc_nono.json, recorded by running RVC's code from a checkout
(fixtures/make_rvc_nono.py, the command in its docstring): the state-dict layout (keys, shapes, order) of
every RVC preset, and the audio RVC's ``infer`` makes from fixed weights and inputs with the prior's noise
off, for a reduced-width v1 and v2 40k model. arvc uses it to export RVC's f0=0 files to ONNX.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rvcfiles import key_digest, patterned_weights, reduced_width

from arvc.config import load_config
from arvc.model import Synthesizer
from arvc.modelfile.read import load_state_strict

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "rvc_nono.json").read_text())
# float32, the same operations in another implementation: measured max |difference| 3.3e-9 here (outputs
# peak 0.022, so about one float32 step); the bound leaves room for other CPUs' kernels and is still 14x
# below what another speaker id changes (1.4e-6) and 50x below zeroed content features (5.4e-6).
ATOL = 1e-7


@pytest.mark.parametrize("name", sorted(FIXTURE["keys"]))
def test_the_layout_is_rvcs_nono_model(name):
    with torch.device("meta"):
        net = Synthesizer(load_config(name), f0=False)
    assert key_digest([(k, list(v.shape)) for k, v in net.state_dict().items()]) == FIXTURE["keys"][name]
    assert not any("emb_pitch" in k or "m_source" in k or "noise_convs" in k for k in net.state_dict())


@pytest.mark.parametrize("name", sorted(FIXTURE["numeric"]["models"]))
def test_inference_equals_rvcs_nono_model(name):
    numeric = FIXTURE["numeric"]
    cfg = reduced_width(load_config(name))
    net = Synthesizer(cfg, f0=False).eval()
    weights = {k: v.float() * numeric["weight_scale"] for k, v in patterned_weights(cfg, 1, f0=False).items()}
    load_state_strict(net, weights, "patterned weights", cfg, optional=("enc_q.",))
    frames, dim = numeric["frames"], cfg.data.feature_dim
    index = torch.arange(frames * dim, dtype=torch.float64)  # make_rvc_nono.nono_inputs
    phone = (torch.sin(index * 0.37) * 0.5).to(torch.float32).reshape(1, frames, dim)
    audio = net.infer(phone, torch.tensor([frames]), None, None, torch.tensor([1]), noise_scale=0.0)
    expected = np.array(numeric["models"][name], dtype=np.float32)
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(audio.flatten().numpy(), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["v2-40k", "v1-32k"])
def test_an_rvc_training_file_without_f0_is_recognised(tmp_path, name):
    """RVC's G_*.pth of a run without pitch guidance (its whole nono generator, enc_q too, in the layout
    fixtures/rvc_nono.json recorded from RVC) had no configuration: `arvc inspect` said "sample rate
    unknown", `arvc export --onnx` refused it. It is recognised as its preset, f0=0, from its weights."""
    from rvcfiles import cli_fails
    from typer.testing import CliRunner

    from arvc.cli import app
    from arvc.modelfile.read import read_model_file

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Synthesizer(load_config(name), f0=False).state_dict().items()}
    assert key_digest([(k, list(s)) for k, s in shapes.items()]) == FIXTURE["keys"][name]  # RVC's layout
    assert not any(k.startswith("dec.m_source.") for k in shapes)  # no NSF source: what tells f0=0 apart
    path = tmp_path / "G_2333333.pth"
    model = {k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}
    torch.save({"model": model, "iteration": 20, "learning_rate": 1e-4}, path)  # as RVC's save_checkpoint

    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    sr = {"32k": 32000, "40k": 40000}[name[3:]]
    assert (
        info["format"],
        info["config"],
        info["sample_rate"],
        info["version"],
        info["f0"],
        info["epoch"],
    ) == ("rvc-train", name, sr, name[:2], 0, 20)
    mf = read_model_file(path)
    load_state_strict(Synthesizer(mf.config, f0=False), mf.generator, mf, mf.config)  # fits, enc_q too
    args = ["train", "--pretrained-g", path, "--runs-dir", tmp_path / "runs"]
    cli_fails(args, "without pitch guidance (f0=0", "f0G40k.pth")  # arvc trains pitch-guided models
