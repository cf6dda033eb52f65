"""Surviving interruptions: stop on SIGINT/SIGTERM at a step boundary, and give up on divergence."""

from __future__ import annotations

import logging
import signal
import threading

__all__ = ["StopOnSignal"]

logger = logging.getLogger(__name__)


class StopOnSignal:
    """First SIGINT/SIGTERM: ask the loop to finish its step, save and exit. Second: exit at once.

    Used as a context manager around the training loop; handlers are only installed in the main
    thread (signals cannot be handled elsewhere) and are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            logger.warning("%s again: exiting immediately (the last checkpoint is intact)", name)
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
