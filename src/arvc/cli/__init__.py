"""The `arvc` command line: thin over the library — parse, call, print.

`arvc.cli._app` holds the Typer app, console and `fail`; each command group is one module here that
registers on that app when imported. They are imported below in the order `arvc --help` lists them
(the main job first).
"""

from arvc.cli import optimizers, train, models, score, compare, bench, ui  # noqa: F401,I001  (registers the commands)
from arvc.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
