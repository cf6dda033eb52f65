"""`arvc ui`: serve the web interface (train, compare, convert, models) from this folder."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated

import typer

from arvc.cli._app import app, console, fail
from arvc.device import AUTO as AUTO_DEVICE
from arvc.device import DEVICE_HELP, resolve_device

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _gradio():
    try:
        import gradio
    except ImportError:
        fail("arvc ui needs gradio, which is not installed: pip install 'arvc[ui]'")
    return gradio


@app.command(name="ui")
def ui_command(
    root: Annotated[
        Path,
        typer.Option(help="The server's folder: runs/, compare/ and uploads live here; no path outside."),
    ] = Path("."),
    host: Annotated[str, typer.Option(help="Address to bind (default: this machine only).")] = LOOPBACK,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 7860,
    device: Annotated[
        str, typer.Option(help=f"Where trainings, comparisons and conversions run: {DEVICE_HELP}.")
    ] = AUTO_DEVICE,
) -> None:
    """Serve arvc's web interface (pip install 'arvc\\[ui]'): train, compare, convert, inspect."""
    if not root.is_dir():
        fail(f"--root {root} is not a folder")
    try:
        resolve_device(device)
    except ValueError as error:
        fail(str(error))
    root = root.resolve()
    uploads = root / ".arvc-ui" / "uploads"
    try:
        uploads.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        fail(f"cannot write in --root {root}: {error}")
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)  # uploads stay inside the server's folder
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    _gradio()
    from arvc.ui.app import build_app

    if not is_loopback(host):
        console.print(
            f"[yellow]warning:[/yellow] serving on {host}: the UI has no authentication; anyone who can "
            f"reach this address can train, convert and read files under {root}",
            highlight=False,
        )
    console.print(f"arvc ui: http://{host}:{port} (folder {root}; Ctrl-C to quit)", highlight=False)
    build_app(root, device=device).launch(
        server_name=host, server_port=port, allowed_paths=[str(root)], show_error=True, quiet=True
    )
