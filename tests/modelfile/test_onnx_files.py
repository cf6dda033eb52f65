"""ONNX from model files, not runs: `arvc export MODEL --onnx` (RVC .pth v1/v2, arvc exports) and
`arvc merge --onnx`, through the CLI: the files, their interface and metadata, and the refusals.

The graph's parity with the torch generator is tested in test_onnx.py (tiny) and test_onnx_families.py
(every config family); here the file route is checked to carry the model file's weights: its graph's
initializers equal those of :func:`export_onnx` of the generator loaded from that file.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from rvcfiles import cli_fails as _fails
from rvcfiles import rvc_file, small_rvc_config
from typer.testing import CliRunner

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from arvc.cli import app  # noqa: E402
from arvc.model import Synthesizer  # noqa: E402
from arvc.modelfile.export import export_generator  # noqa: E402
from arvc.modelfile.onnx import client_metadata, export_onnx  # noqa: E402
from arvc.modelfile.read import PretrainedError, load_state_strict, read_model_file  # noqa: E402

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("wide_console")  # tests/conftest.py


def _ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _props(path) -> dict:
    props = _session(path).get_modelmeta().custom_metadata_map
    return {key: json.loads(value) for key, value in props.items()}


def _initializers(path) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _same_weights_as_a_direct_export(path, model_file, tmp_path):
    """The file route's graph holds the model file's weights: the same initializers as export_onnx of the
    generator loaded from the file."""
    mf = read_model_file(model_file)
    net = Synthesizer(mf.config, f0=mf.f0 != 0)
    load_state_strict(net, mf.generator, mf, mf.config, optional=("enc_q.",))
    direct = export_onnx(net, mf.config, tmp_path / "direct.onnx")
    ours, theirs = _initializers(path), _initializers(direct)
    assert ours.keys() == theirs.keys() and len(ours) > 10
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)


V1 = {"data__feature_dim": 256}


@pytest.mark.parametrize(
    ("changes", "version", "f0", "model_type", "dim"),
    [
        ({}, "v2", 1, "pyTorchRVCv2", 768),
        (V1, "v1", 1, "pyTorchRVC", 256),
        (V1, "v1", 0, "pyTorchRVCNono", 256),
    ],
    ids=["v2", "v1", "v1-no-f0"],
)
def test_an_rvc_pth_exports_to_onnx_beside_it(tmp_path, changes, version, f0, model_type, dim):
    cfg = small_rvc_config(**changes)
    if version == "v1":
        cfg.version = "v1"
    rvc_file(tmp_path / "voice.pth", cfg, seed=1, version=version, f0=f0)
    output = _ok(["export", tmp_path / "voice.pth", "--onnx"])
    path = tmp_path / "voice.onnx"
    assert f"onnx: {path}" in output
    session = _session(path)
    names = ["feats", "p_len", "pitch", "pitchf", "sid"] if f0 else ["feats", "p_len", "sid"]
    assert [i.name for i in session.get_inputs()] == names
    assert session.get_inputs()[0].shape == [1, "T", dim] and session.get_inputs()[0].type == "tensor(float)"
    props = _props(path)
    config = read_model_file(tmp_path / "voice.pth").config
    assert props["metadata"] == client_metadata(config, f0=bool(f0)) and props["metadata"]["f0"] is bool(f0)
    assert (props["metadata"]["modelType"], props["metadata"]["samplingRate"]) == (model_type, 32000)
    assert props["arvc"]["features"] == "hubert"  # an RVC file: RVC's tools feed it HuBERT features
    _same_weights_as_a_direct_export(path, tmp_path / "voice.pth", tmp_path)


def test_an_arvc_export_exports_fp16_and_infer_runs_it(tmp_path):
    cfg = small_rvc_config()
    cfg.data.feature_dim = 80  # a mel model: arvc runs it (the client would feed it HuBERT features)
    torch.manual_seed(3)
    export_generator(Synthesizer(cfg), cfg, tmp_path / "export", features="mel")
    _ok(["export", tmp_path / "export", "--onnx-half"])  # an export folder: its model.safetensors
    half = tmp_path / "export" / "model_fp16.onnx"
    assert _session(half).get_inputs()[0].type == "tensor(float16)"
    assert _props(half)["arvc"]["features"] == "mel"
    out = tmp_path / "elsewhere" / "voice.onnx"
    out.parent.mkdir()
    out.write_bytes(b"an older export")
    args = ["export", tmp_path / "export" / "model.json", "--onnx", "-o", out, "--embedder-layer", "9"]
    assert f"onnx: {out}" in _ok([*args, "--overwrite"])
    assert _props(out)["metadata"]["embOutputLayer"] == 9
    t = np.arange(6400) / 32000
    sf.write(tmp_path / "in.wav", (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 32000)
    _ok(["infer", out, tmp_path / "in.wav", tmp_path / "o.wav"])
    audio, sr = sf.read(tmp_path / "o.wav")
    assert sr == 32000 and len(audio) == 6400 and np.isfinite(audio).all()


def test_refusals_say_what_and_leave_the_files_as_they_were(tmp_path, monkeypatch):
    cfg = small_rvc_config()
    rvc_file(tmp_path / "voice.pth", cfg, seed=1)
    pth, onnx_path = tmp_path / "voice.pth", tmp_path / "voice.onnx"
    onnx_path.write_bytes(b"the user's file")
    _fails(["export", pth, "--onnx"], f"{onnx_path} exists", "--overwrite")
    assert onnx_path.read_bytes() == b"the user's file"
    _fails(["export", pth], "exports to ONNX only", "--onnx")
    _fails(["export", pth, "--onnx", "-o", tmp_path / "v.pth"], "must name an .onnx file")
    _fails(["export", pth, "--onnx", "-o", tmp_path], "is a folder")
    _fails(["export", pth, "--onnx", "--onnx-half", "-o", tmp_path / "v.onnx"], "one at a time")
    _fails(["export", onnx_path, "--onnx", "-o", tmp_path / "v.onnx"], "already an ONNX file")
    _fails(["export", tmp_path / "run", "-o", tmp_path / "v.onnx"], "not a model file")
    monkeypatch.setitem(sys.modules, "onnx", None)
    _fails(["export", pth, "--onnx", "-o", tmp_path / "v.onnx"], "pip install 'arvc[onnx]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voice.onnx", "voice.pth"]
    assert onnx_path.read_bytes() == b"the user's file"


def test_a_no_f0_file_that_does_not_fit_is_described_as_no_f0(tmp_path):
    """The "does not fit" error said "config: ... f0=1" whatever the model: an RVC f0=0 file (loaded into
    the no-f0 layout its export builds) was described as fitting a pitch-guided model."""
    cfg = small_rvc_config()
    rvc_file(tmp_path / "voice.pth", cfg, seed=1, f0=0)
    data = torch.load(tmp_path / "voice.pth", weights_only=True)
    data["weight"]["dec.conv_post.weight"] = data["weight"]["dec.conv_post.weight"][..., :5]  # damaged
    torch.save(data, tmp_path / "voice.pth")
    flat = _fails(
        ["export", tmp_path / "voice.pth", "--onnx"],
        "does not fit the generator",
        "file: rvc-inference (generator), 32000 Hz, v2, f0=0",
        "config: 32000 Hz, v2, 768-d features, f0=0",
        "dec.conv_post.weight file [1, 8, 5] vs model [1, 8, 7]",
    )
    assert "f0=1" not in flat
    assert not (tmp_path / "voice.onnx").exists()
    # the Python API: an f0=0 file into a pitch-guided generator is told apart from other misfits
    rvc_file(tmp_path / "nono.pth", cfg, seed=1, f0=0)
    mf = read_model_file(tmp_path / "nono.pth")
    with pytest.raises(PretrainedError) as info:
        load_state_strict(Synthesizer(cfg), mf.generator, mf, mf.config, optional=("enc_q.",))
    message = str(info.value)
    assert "768-d features, f0=1" in message and "keys missing from the file" in message
    assert "the file is f0=0 (without pitch guidance), the model f0=1" in message


def test_merge_writes_onnx_on_request_and_drops_a_stale_one(tmp_path):
    cfg = small_rvc_config()
    rvc_file(tmp_path / "a.pth", cfg, seed=1)
    rvc_file(tmp_path / "b.pth", cfg, seed=2)
    out = tmp_path / "merged"
    output = _ok(["merge", tmp_path / "a.pth", tmp_path / "b.pth", "-o", out, "--onnx"])
    assert f"onnx: {out / 'model.onnx'}" in output
    files = ["model.json", "model.onnx", "model.safetensors", "model_rvc.pth"]
    assert sorted(p.name for p in out.iterdir()) == files
    assert _props(out / "model.onnx")["metadata"]["samplingRate"] == 32000
    _same_weights_as_a_direct_export(out / "model.onnx", out / "model.safetensors", tmp_path)
    _ok(["merge", tmp_path / "b.pth", tmp_path / "a.pth", "-o", out, "--overwrite"])
    assert not (out / "model.onnx").exists()  # the old ONNX file was the other merge's model


def test_a_merge_without_pitch_guidance_gets_the_clients_no_f0_interface(tmp_path):
    """Two f0=0 ("nono") files: `arvc merge --onnx` and `arvc export MERGED --onnx` both write the client's
    no-f0 interface (feats, p_len, sid) holding the merged weights; arvc infer refuses the file clearly."""
    cfg = small_rvc_config()
    rvc_file(tmp_path / "a.pth", cfg, seed=1, f0=0)
    rvc_file(tmp_path / "b.pth", cfg, seed=2, f0=0)
    out = tmp_path / "merged"
    _ok(["merge", tmp_path / "a.pth", tmp_path / "b.pth", "-o", out, "--onnx"])
    _ok(["export", out, "--onnx", "-o", tmp_path / "again.onnx"])
    for path in (out / "model.onnx", tmp_path / "again.onnx"):
        assert [i.name for i in _session(path).get_inputs()] == ["feats", "p_len", "sid"]
        metadata = _props(path)["metadata"]
        assert metadata == client_metadata(read_model_file(out).config, f0=False)
        assert (metadata["f0"], metadata["modelType"]) == (False, "pyTorchRVCv2Nono")
    _same_weights_as_a_direct_export(out / "model.onnx", out / "model_rvc.pth", tmp_path)
    merged, again = _initializers(out / "model.onnx"), _initializers(tmp_path / "again.onnx")
    assert merged.keys() == again.keys()
    for name, value in merged.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)
    sf.write(tmp_path / "in.wav", np.zeros(3200, dtype=np.float32), 32000)
    _fails(["infer", out / "model.onnx", tmp_path / "in.wav", tmp_path / "o.wav"], "without pitch guidance")
    assert not (tmp_path / "o.wav").exists()


def test_merge_without_onnx_installed_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    cfg = small_rvc_config()
    rvc_file(tmp_path / "a.pth", cfg, seed=1)
    rvc_file(tmp_path / "b.pth", cfg, seed=2)
    monkeypatch.setitem(sys.modules, "onnx", None)
    _fails(["merge", tmp_path / "a.pth", tmp_path / "b.pth", "-o", tmp_path / "m", "--onnx"], "arvc[onnx]")
    assert not (tmp_path / "m").exists()
