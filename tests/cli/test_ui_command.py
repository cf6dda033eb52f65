"""`arvc ui`: its refusals and warnings, without serving (the page itself: tests/ui/)."""

import os

import pytest
from typer.testing import CliRunner

from arvc.cli import app

runner = CliRunner()


class _NoServer:
    """What build_app returns, minus the server: records how it would have been launched."""

    launched: dict = {}

    def launch(self, **kwargs):
        _NoServer.launched = kwargs


@pytest.fixture
def no_server(monkeypatch):
    pytest.importorskip("gradio")
    import arvc.ui.app

    monkeypatch.setattr(arvc.ui.app, "build_app", lambda root, device="cpu": _NoServer())
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    yield _NoServer
    os.environ.pop("GRADIO_TEMP_DIR", None)


def test_without_gradio_the_error_names_the_extra(tmp_path, block_import):
    block_import("gradio")
    result = runner.invoke(app, ["ui", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "pip install 'arvc[ui]'" in result.output


def test_binds_this_machine_only_by_default_and_keeps_uploads_inside_the_root(tmp_path, no_server):
    result = runner.invoke(app, ["ui", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert no_server.launched["server_name"] == "127.0.0.1" and "warning" not in result.output
    assert no_server.launched["allowed_paths"] == [str(tmp_path.resolve())]
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path.resolve() / ".arvc-ui" / "uploads")


def test_another_host_warns_that_there_is_no_authentication(tmp_path, no_server):
    result = runner.invoke(app, ["ui", "--root", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 0 and "no authentication" in result.output
    assert no_server.launched["server_name"] == "0.0.0.0"


@pytest.mark.parametrize(
    "args, message",
    [(["--root", "missing"], "is not a folder"), (["--device", "tpu"], "unknown device")],
)
def test_bad_options_fail_before_serving(tmp_path, no_server, args, message):
    no_server.launched = {}
    result = runner.invoke(app, ["ui", *[str(tmp_path / a) if a == "missing" else a for a in args]])
    assert result.exit_code == 1 and message in " ".join(result.output.split()) and no_server.launched == {}
