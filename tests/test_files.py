"""The one atomic writer (`arvc._files`) and what users get from it: whole files, normal modes, no litter."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from arvc._files import WriteError, atomic_file, write_text
from arvc.config import load_config
from arvc.model import Synthesizer
from arvc.modelfile import export as export_module
from arvc.modelfile.export import export_generator
from arvc.modelfile.read import read_model_file
from arvc.train.checkpoint import atomic_save


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tiny_generator(seed: int) -> tuple[Synthesizer, object]:
    cfg = load_config("tiny")
    torch.manual_seed(seed)
    return Synthesizer(cfg), cfg


def test_checkpoint_and_exported_model_are_0644_under_umask_022(tmp_path, umask):
    umask(0o022)
    checkpoint = tmp_path / "checkpoints" / "ckpt_E00001_S00000001.pt"
    atomic_save({"x": torch.ones(2)}, checkpoint)
    generator, cfg = _tiny_generator(0)
    written = export_generator(generator, cfg, tmp_path / "export")
    assert _mode(checkpoint) == 0o644
    for path in written.values():
        assert _mode(path) == 0o644, path


def test_mode_follows_the_umask_like_a_plain_open(tmp_path, umask):
    umask(0o077)
    write_text(tmp_path / "a.txt", "a")
    with open(tmp_path / "b.txt", "w") as handle:
        handle.write("b")
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.txt") == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old\n")
    # what the writer raised (a RuntimeError, like torch's zip writer) becomes a WriteError naming the file
    with (
        pytest.raises(WriteError, match=r"could not write .*metrics.csv: RuntimeError: disk full"),
        atomic_file(target) as temporary,
    ):
        temporary.write_text("half a fi")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_a_failed_export_keeps_the_previous_model(tmp_path, monkeypatch):
    generator, cfg = _tiny_generator(0)
    out = tmp_path / "export"
    export_generator(generator, cfg, out, info="first")
    before = (out / "model.safetensors").read_bytes()

    def broken_save_file(weights, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 10)
        raise OSError("No space left on device")

    monkeypatch.setattr(export_module, "save_file", broken_save_file)
    with pytest.raises(OSError, match="No space left"):
        export_generator(_tiny_generator(1)[0], cfg, out, info="second")
    assert (out / "model.safetensors").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_two_exports_into_one_folder_do_not_collide(tmp_path, monkeypatch):
    """A second export runs entirely while the first has written its weights but not yet renamed them
    (what two concurrent `arvc export`s into one folder do). Each writes its own temporary file: both
    succeed, the later rename wins, and nothing is left behind."""
    first, cfg = _tiny_generator(0)
    second, _ = _tiny_generator(1)
    out = tmp_path / "export"
    real_save_file = export_module.save_file
    calls = []

    def save_then_let_the_other_export_run(weights, filename, metadata=None):
        real_save_file(weights, filename, metadata=metadata)
        calls.append(filename)
        if len(calls) == 1:
            export_generator(second, cfg, out, info="second")

    monkeypatch.setattr(export_module, "save_file", save_then_let_the_other_export_run)
    export_generator(first, cfg, out, info="first")
    assert len(calls) == 2 and calls[0] != calls[1]
    model = read_model_file(out / "model.safetensors")
    expected = {k: v.float() for k, v in export_module.inference_state_dict(first).items()}
    assert model.generator.keys() == expected.keys()
    assert all(torch.equal(model.generator[k], expected[k]) for k in expected)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
