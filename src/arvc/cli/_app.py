"""The `arvc` Typer app, its console and `fail`; every command module registers on this app.

This module imports no command, so command modules can import it without a cycle; the package
(:mod:`arvc.cli`) imports the command modules in the order `arvc --help` lists them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

app = typer.Typer(
    help="arvc: train RVC voice models with a rated, reference-tested optimizer system.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


# Written to a file or a pipe (nohup, Colab, CI), rich would wrap every line at 80 columns and cut a path
# in two: there, lines are never wrapped.
console = Console(soft_wrap=not _is_terminal(sys.stdout))

# Options several commands take, spelt once.
RmvpeOption = Annotated[
    Path | None, typer.Option(help="RVC's rmvpe.pt for --f0 rmvpe (RVC WebUI: assets/rmvpe/rmvpe.pt).")
]
ConfigOption = Annotated[str, typer.Option(help="tiny, v2-32k/40k/48k, v1-32k/40k/48k or a JSON file.")]
EmbedderLayerOption = Annotated[
    int | None,
    typer.Option(min=1, help="HuBERT layer (default: the model's; v2: last, v1: 9th through final_proj)."),
]


class _PlainHandler(logging.StreamHandler):
    """One unwrapped line per record (time, level, message) on whatever sys.stderr is when it writes."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it; sys.stderr at each write wins
        pass


def _setup_logging(verbose: bool) -> None:
    """Rich log lines on a terminal; plain, unwrapped lines where stderr is a file or a pipe (rich's would
    be wrapped at 80 columns and padded with spaces)."""
    stderr = Console(stderr=True)
    handler = RichHandler(console=stderr, show_path=False) if stderr.is_terminal else _PlainHandler()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler], force=True
    )


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    _setup_logging(verbose)


def fail(message: str, code: int = 1) -> None:
    """Print `error: message` and exit with status `code` (1: the CLI's one way to report bad input)."""
    # one unwrapped line: a path or a command in it stays whole, to copy (rich wraps at 80 columns)
    console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)
