"""The web UI's Models tab, without a browser: what its Merge button calls."""

import pytest
import torch

from arvc.config import load_config
from arvc.model import Synthesizer
from arvc.modelfile.export import export_generator
from arvc.ui.jobs import Jobs

gradio = pytest.importorskip("gradio", reason="the UI needs the ui extra (pip install 'arvc[ui]')")


def test_the_models_tab_merges_and_warns_about_what_it_refuses(tmp_path, monkeypatch):
    from arvc.ui import app as ui_app

    said = []
    monkeypatch.setattr(ui_app.gr, "Warning", lambda message: said.append(message))
    page = ui_app.build_app(tmp_path, Jobs())
    (merge,) = [f.fn for f in page.fns.values() if getattr(f.fn, "__name__", "") == "merge"]
    cfg = load_config("tiny")
    for seed in (1, 2):
        torch.manual_seed(seed)
        export_generator(Synthesizer(cfg), cfg, tmp_path / f"m{seed}", features="mel")

    result = merge("m1\nm2\n", "0.7,0.3", "merged", False)
    assert result["weights"] == [0.7, 0.3] and not said
    assert (tmp_path / "merged" / "model.safetensors").is_file()

    assert merge("m1\nm2", "", "merged", False) is None  # exists: needs the checkbox
    assert "exists and is not empty" in said[-1]
    assert merge("m1\nm2", "", "merged", True)["weights"] == [0.5, 0.5]
    assert merge("m1\nm2", "0.7,0.7", "other", False) is None and "must sum to 1" in said[-1]
    assert merge("m1\n/etc/passwd", "", "other", False) is None and "outside the server's folder" in said[-1]
    assert merge("m1\nm2", "", "", False) is None and "output folder" in said[-1]
    assert not (tmp_path / "other").exists()


def test_the_models_tab_exports_a_model_file_and_a_merge_to_onnx(tmp_path, monkeypatch):
    """The ONNX checkbox: Export of a model file writes its VC Client .onnx beside it (never over a file
    there), Merge adds model.onnx; what is refused is a warning."""
    pytest.importorskip("onnxruntime")
    from arvc.ui import app as ui_app

    said = []
    monkeypatch.setattr(ui_app.gr, "Warning", lambda message: said.append(message))
    page = ui_app.build_app(tmp_path, Jobs())
    functions = {getattr(f.fn, "__name__", ""): f.fn for f in page.fns.values()}
    export, merge = functions["export"], functions["merge"]
    cfg = load_config("tiny")
    for seed in (1, 2):
        torch.manual_seed(seed)
        export_generator(Synthesizer(cfg), cfg, tmp_path / f"m{seed}", features="mel")

    assert export("m1/model.safetensors", False) is None and "tick ONNX" in said[-1]
    assert export("m1/model.safetensors", True) == {"onnx": str(tmp_path / "m1" / "model.onnx")}
    assert len(said) == 1
    before = (tmp_path / "m1" / "model.onnx").stat().st_mtime_ns
    assert export("m1/model.safetensors", True) is None and "exists" in said[-1]
    assert (tmp_path / "m1" / "model.onnx").stat().st_mtime_ns == before
    result = merge("m1\nm2", "", "merged", False, True)
    assert result["onnx"] == str(tmp_path / "merged" / "model.onnx") and len(said) == 2
