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
