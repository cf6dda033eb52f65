"""`arvc inspect / export / index / infer`: what a user sees, and errors that exit 1 with `error:`."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from arvc.cli import app
from arvc.config import load_config
from arvc.model import MultiPeriodDiscriminator, Synthesizer
from arvc.train.checkpoint import checkpoint_path

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("wide_console")  # tests/conftest.py


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A trained-looking tiny run: one checkpoint, preprocessed features, a recording to convert."""
    run = tmp_path_factory.mktemp("runs") / "alice"
    cfg = load_config("tiny")
    torch.manual_seed(0)
    hp = {"optimizer": "AdamW", "lr": 1e-3, "betas": (0.8, 0.99)}
    checkpoint = {
        "format": "arvc-checkpoint",
        "version": 1,
        "epoch": 2,
        "step": 20,
        "config": cfg.to_dict(),
        "generator": Synthesizer(cfg).state_dict(),
        "discriminator": MultiPeriodDiscriminator(cfg).state_dict(),
        "optim_g": {"name": "AdamW", "hyperparameters": hp, "state": {}},
        "optim_d": {"name": "AdamW", "hyperparameters": hp, "state": {}},
    }
    path = checkpoint_path(run, 2, 20)
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    features = run / "data" / "3_feature"
    features.mkdir(parents=True)
    np.save(features / "a.npy", np.random.default_rng(0).standard_normal((3000, 80)).astype(np.float32))
    t = np.arange(16000) / 16000
    sf.write(run / "in.wav", (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    return run


@pytest.fixture(scope="module")
def exported(run_dir):
    """`arvc export` run once for the module; returns its output."""
    return _ok(["export", run_dir]).output


def _ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _fails(args, *texts):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output
    flat = " ".join(result.output.split())
    for text in texts:
        assert text in flat, flat
    return result


def test_export_then_inspect_each_format(run_dir, exported):
    assert "exported ckpt_E00002_S00000020.pt (epoch 2, step 20)" in exported
    assert (run_dir / "export" / "model.safetensors").is_file() and (
        run_dir / "export" / "model.json"
    ).is_file()
    info = json.loads(_ok(["inspect", run_dir / "export" / "model.json", "--json"]).stdout)
    assert (info["format"], info["config"], info["sample_rate"]) == ("arvc-export", "tiny", 16000)
    assert info["info"] == "arvc AdamW epoch 2"
    table = _ok(["inspect", checkpoint_path(run_dir, 2, 20)]).output
    for text in ("arvc-checkpoint", "AdamW", "lr=0.001", "generator, discriminator", "16000"):
        assert text in table, table
    torch.save({"model": Synthesizer(load_config("tiny")).state_dict()}, run_dir / "G_0.pth")
    assert "rvc-train" in _ok(["inspect", run_dir / "G_0.pth"]).output


def test_inspect_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"junk")
    _fails(["inspect", tmp_path / "junk.pth"], "damaged or not a model file")
    _fails(["inspect", tmp_path / "missing.pth"], "does not exist")


def test_export_needs_a_checkpoint(tmp_path):
    _fails(["export", tmp_path / "nope"], "does not exist")
    _fails(["export", tmp_path], "no checkpoint in")


def test_export_onnx_for_the_vc_client(run_dir, tmp_path):
    onnx = pytest.importorskip("onnx")
    run = tmp_path / "alice"
    shutil.copytree(run_dir, run)
    output = " ".join(_ok(["export", run, "--onnx", "--onnx-half"]).output.split())
    path = run / "export" / "model.onnx"
    assert f"onnx: {path}" in output and f"onnx-fp16: {run / 'export' / 'model_fp16.onnx'}" in output
    model = onnx.load(str(path))
    assert [x.name for x in model.graph.input] == ["feats", "p_len", "pitch", "pitchf", "sid"]
    meta = json.loads({p.key: p.value for p in model.metadata_props}["metadata"])
    assert (meta["application"], meta["samplingRate"], meta["embChannels"]) == ("VC_CLIENT", 16000, 80)
    out = tmp_path / "out.wav"
    assert "wrote" in _ok(["infer", path, run / "in.wav", out]).output  # arvc infer runs the file
    audio, sr = sf.read(out)
    assert sr == 16000 and len(audio) == 16000 and np.isfinite(audio).all()
    half = tmp_path / "half.wav"
    _ok(["infer", run / "export" / "model_fp16.onnx", run / "in.wav", half])
    assert len(sf.read(half)[0]) == 16000


def test_export_onnx_without_onnx_names_the_extra_and_writes_nothing(run_dir, tmp_path, monkeypatch):
    run = tmp_path / "alice"
    shutil.copytree(run_dir, run)
    monkeypatch.setitem(sys.modules, "onnx", None)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    _fails(["export", run, "--onnx"], "pip install 'arvc[onnx]'")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before  # nothing written


def test_index_then_infer_with_it(run_dir, exported, tmp_path):
    pytest.importorskip("faiss")
    assert "IVF76,Flat over 3,000 vectors of 80 dims" in _ok(["index", run_dir]).output
    out = tmp_path / "out.wav"
    args = ["infer", run_dir / "export", run_dir / "in.wav", out, "--pitch", "2", "--index"]
    result = _ok([*args, run_dir / "export" / "added.index"])
    assert f"wrote {out} (16000 Hz)" in " ".join(result.output.split())
    audio, sr = sf.read(out)
    assert sr == 16000 and len(audio) == 16000 and np.isfinite(audio).all()


def test_infer_errors(run_dir, exported, tmp_path):
    pytest.importorskip("faiss")
    model = run_dir / "export"
    _fails(["infer", model, tmp_path / "missing.wav", tmp_path / "o.wav"], "input audio", "does not exist")
    _fails(["infer", model, run_dir / "in.wav", run_dir / "in.wav"], "is the input file")
    _fails(
        ["infer", model, run_dir / "in.wav", tmp_path / "o.wav", "--hubert", tmp_path], "80-d mel features"
    )
    _fails(["infer", model, run_dir / "in.wav", tmp_path / "o.wav", "--index-rate", "0.5"], "needs an index")
    _fails(["infer", tmp_path / "none.pth", run_dir / "in.wav", tmp_path / "o.wav"], "does not exist")
    import faiss

    wrong = faiss.IndexFlatL2(768)
    wrong.add(np.zeros((2, 768), dtype=np.float32))
    faiss.write_index(wrong, str(tmp_path / "v2.index"))
    args = ["infer", model, run_dir / "in.wav", tmp_path / "o.wav", "--index", tmp_path / "v2.index"]
    _fails(args, "768-d features", "model uses 80-d features")


def test_infer_with_rmvpe_pitch(run_dir, exported, tmp_path, rmvpe_weights):
    """`--f0 rmvpe --rmvpe PATH` converts with the user's rmvpe.pt; without a usable file, a clear error
    before anything is written."""
    model, source, out = run_dir / "export", run_dir / "in.wav", tmp_path / "rmvpe.wav"
    _fails(["infer", model, source, out, "--f0", "rmvpe"], "--f0 rmvpe needs --rmvpe PATH", "rmvpe.pt")
    _fails(
        ["infer", model, source, out, "--f0", "rmvpe", "--rmvpe", run_dir / "config.json"], "not a readable"
    )
    assert not out.exists()
    _ok(["infer", model, source, out, "--f0", "rmvpe", "--rmvpe", rmvpe_weights[0]])
    audio, sr = sf.read(out)
    assert sr == 16000 and len(audio) == 16000 and np.isfinite(audio).all()
