"""Ctrl-C that always stops `atlas fit`.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be. Now
and then (seen a second into the training) that exception never reaches the command
line: something on the step's path drops it without a word, and the fit goes on for all
its steps. The command line installs a handler that also records the request, and the
training loop checks the record every step, so a dropped interrupt still ends the fit
one step later (its spill and lock released on the way out). The Python API leaves the
process's handlers alone, and so does the command line where SIGINT is not Python's own
(ignored under nohup or in a background job, or handled by an embedding program).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator

_requested = False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def recorded() -> Iterator[None]:
    """Within: every SIGINT is recorded (and raises KeyboardInterrupt, as Python's own
    handler does). After: the previous handler is back and the record cleared (the
    command line may run again in the same process, as the tests do). A handler other
    than Python's is left in place."""
    global _requested
    # only the main thread may set handlers
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested = False


def check() -> None:
    """Raise KeyboardInterrupt if a SIGINT was recorded (one that was dropped, since a
    raised one would not have let the caller get here)."""
    if _requested:
        raise KeyboardInterrupt
