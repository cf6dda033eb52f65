"""Surviving interruptions: stop on SIGINT/SIGTERM at a step boundary, and give up on divergence."""

from __future__ import annotations

import logging
import signal
import threading

__all__ = ["StopOnSignal", "exit_status"]

logger = logging.getLogger(__name__)


def exit_status(stopped_by: str | None) -> int | None:
    """The shell's status for a run a signal stopped, 128 + the signal's number (SIGINT 130, SIGTERM 143),
    so that `arvc train ... && arvc export ...` does not go on; None for any other end (finished, max_steps,
    early_stop, the web UI's stop request)."""
    if stopped_by not in ("SIGINT", "SIGTERM"):
        return None
    return 128 + signal.Signals[stopped_by].value


class StopOnSignal:
    """First SIGINT/SIGTERM: ask the loop to finish its step, save and exit. Second: exit at once.

    Used as a context manager around the training loop; handlers are only installed in the main
    thread (signals cannot be handled elsewhere) and are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self.forced: str | None = (
            None  # the second signal's name: exiting at once (a save in progress is lost)
        )
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            logger.warning("%s again: exiting immediately (the last checkpoint is intact)", name)
            self.forced = name
            self._restore()
            signal.raise_signal(signum)
            return
        self.requested = name
        logger.warning(
            "%s: finishing the current step, then saving a checkpoint (again to exit at once)", name
        )

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __exit__(self, *exc) -> None:
        self._restore()
