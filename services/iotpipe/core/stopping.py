"""A stop request from SIGTERM or SIGINT that a signal handler can set safely."""

from __future__ import annotations

import signal
import time

POLL_S = 0.05


class StopFlag:
    """Set by SIGTERM/SIGINT; the main loop checks it and sleeps on it.

    Not a `threading.Event`: Python runs signal handlers in the main thread between bytecodes,
    and `Event.set` takes the lock that `Event.wait` holds on its way in and out, so a signal
    landing there deadlocks the process. Here the handler only writes a bool.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, returning early (within `POLL_S`) once set; return is_set()."""
        end = time.monotonic() + seconds
        while not self._set and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, POLL_S))
        return self._set

    def set_on_signals(self) -> None:
        """Route SIGTERM and SIGINT here (main thread only, as Python requires)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.set())
