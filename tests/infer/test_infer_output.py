"""`arvc infer`'s output: never overwritten unasked, checked before any work, written in the format its
extension names, readable by common tools without a warning. (A failed write, one `error:` line, is
tested with a real failing write in tests/test_write_failures.py.)"""

from __future__ import annotations

import shutil
import subprocess
import wave

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

import arvc.cli._app
import arvc.infer.convert
from arvc.audio.io import OUTPUT_FORMATS
from arvc.cli import app
from arvc.config import load_config
from arvc.model import Synthesizer
from arvc.modelfile.export import export_generator

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("wide_console")  # tests/conftest.py


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    """A tiny exported model and one second of a recording to convert."""
    folder = tmp_path_factory.mktemp("voice")
    cfg = load_config("tiny")
    torch.manual_seed(0)
    export_generator(Synthesizer(cfg), cfg, folder / "export", features="mel")
    t = np.arange(16000) / 16000
    sf.write(folder / "in.wav", (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    return folder / "export", folder / "in.wav"


def infer(voice, output, *args):
    model, source = voice
    return runner.invoke(app, ["infer", str(model), str(source), str(output), *map(str, args)])


def assert_refused(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and "Traceback" not in result.output, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    text = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture
def no_work(monkeypatch):
    """Loading the model counts as work: a refusal must come before it."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(arvc.infer.convert, "load_voice_model", load)


# --- an existing output ----------------------------------------------------------------------------------
def test_an_existing_output_is_refused_unless_overwrite(voice, tmp_path, monkeypatch):
    out = tmp_path / "out.wav"
    out.write_bytes(b"the take the user kept")
    with monkeypatch.context() as patch:
        patch.setattr(arvc.infer.convert, "load_voice_model", lambda *a: pytest.fail("loaded"))
        refused = infer(voice, out)
    assert_refused(refused, f"output {out} exists; pass --overwrite to replace it")
    assert out.read_bytes() == b"the take the user kept"
    replaced = infer(voice, out, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert sf.info(out).format == "WAV"


# --- an output path that cannot be written, refused before any work ----------------------------------------
def test_an_output_that_is_a_folder_is_refused_before_any_work(voice, tmp_path, no_work):
    (tmp_path / "takes").mkdir()
    assert_refused(infer(voice, tmp_path / "takes"), f"output {tmp_path / 'takes'} is a folder")
    assert_refused(infer(voice, tmp_path / "takes", "--overwrite"), "is a folder; name a file in it")


def test_an_output_under_a_file_is_refused_before_any_work(voice, tmp_path, no_work):
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "out.wav"
    assert_refused(infer(voice, out), f"{tmp_path / 'notes.txt'} is a file, not a folder")


def test_an_output_in_a_read_only_folder_is_refused_before_any_work(voice, tmp_path, monkeypatch, no_work):
    """The tests run as root, which writes into chmod 0o555 folders anyway; a read-only mount refuses root
    too, and os.access says so. Here os.access answers as on such a mount."""
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    real = arvc.infer.convert.os.access
    monkeypatch.setattr(
        arvc.infer.convert.os, "access", lambda p, mode: False if str(p) == str(shelf) else real(p, mode)
    )
    assert_refused(infer(voice, shelf / "new" / "out.wav"), f"{shelf} is not writable")
    assert list(shelf.iterdir()) == []


def test_missing_folders_of_the_output_are_made(voice, tmp_path):
    out = tmp_path / "new" / "sub" / "out.wav"
    result = infer(voice, out)
    assert result.exit_code == 0, result.output
    assert sf.info(out).frames > 0


# --- the format follows the extension ---------------------------------------------------------------------
WRITTEN = [ext for ext, (fmt, subtype) in OUTPUT_FORMATS.items() if sf.check_format(fmt, subtype)]


@pytest.mark.parametrize("extension", WRITTEN)
def test_the_output_has_the_format_its_extension_names(voice, tmp_path, extension):
    out = tmp_path / f"out{extension}"
    result = infer(voice, out)
    assert result.exit_code == 0, result.output
    fmt, subtype = OUTPUT_FORMATS[extension]
    info = sf.info(out)
    assert (info.format, info.subtype) == (fmt, subtype), info
    assert info.samplerate == 16000 and abs(info.frames - 16000) < 1200  # MP3 pads a frame or so


@pytest.mark.parametrize("name", ["out.xyz", "out.aiff", "out"])
def test_an_extension_arvc_cannot_write_is_refused_before_any_work(voice, tmp_path, no_work, name):
    result = infer(voice, tmp_path / name)
    assert_refused(result, "the format follows the extension, and arvc writes .wav, .flac, .ogg")
    assert not (tmp_path / name).exists()


def test_a_wav_output_reads_in_common_tools_without_a_warning(voice, tmp_path):
    """16-bit PCM: Python's wave module (which refuses float WAV) reads it, and so does sox without the
    "header missing extended part of fmt chunk" warning soundfile's float WAV gave."""
    out = tmp_path / "out.wav"
    assert infer(voice, out).exit_code == 0
    with wave.open(str(out)) as reader:
        assert (reader.getsampwidth(), reader.getframerate(), reader.getnchannels()) == (2, 16000, 1)
    if shutil.which("sox") is None:
        pytest.skip("sox is not installed: the wave module's check above ran, sox's did not")
    done = subprocess.run(["sox", str(out), "-n", "stat"], capture_output=True, text=True)
    assert done.returncode == 0 and "WARN" not in done.stderr, done.stderr
