"""Partition end offsets for many concurrent requests from one broker call.

Every window still open to late readings needs the current end of its partitions; under load
many requests ask at once: one looks up the ends of all the partitions waiting, the others wait.
A request only takes an answer from a lookup that started after it asked (as fresh as its own).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

TP = tuple[str, int]


class EndOffsets:
    """`lookup` answers each partition with its end offset or the error of that partition;
    raising fails every partition of its batch."""

    def __init__(self, lookup: Callable[[list[TP]], dict[TP, int | Exception]],
                 timeout_s: float) -> None:
        self._lookup, self._timeout = lookup, timeout_s
        self._cond = threading.Condition()
        self._pending: set[TP] = set()
        self._started = 0  # generation of the last lookup started
        self._done = 0  # generation of the last lookup finished (one runs while they differ)
        self._answers: dict[TP, int | Exception] = {}

    def get(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """End offset of each partition; raises the partition's error, or TimeoutError."""
        wanted = list(partitions)
        # a lookup may be running: this request waits for it, then for its own
        deadline = time.monotonic() + 2 * self._timeout + 1
        with self._cond:
            self._pending.update(wanted)
            mine = self._started + 1  # the next lookup to start includes these partitions
            while self._done < mine:
                if self._done == self._started:
                    self._lead()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("end offset lookup did not finish")
                self._cond.wait(left)
            answers = {tp: self._answers[tp] for tp in wanted}
        offsets: dict[TP, int] = {}
        for tp, answer in answers.items():
            if isinstance(answer, Exception):  # a copy: other threads raise it too
                raise type(answer)(*answer.args)
            offsets[tp] = answer
        return offsets

    def _lead(self) -> None:
        """Look up every pending partition (called holding the lock; released meanwhile)."""
        batch, self._pending = sorted(self._pending), set()
        self._started += 1
        found: dict[TP, int | Exception] = {}
        self._cond.release()
        try:
            found = dict(self._lookup(batch))
        except Exception as e:  # handed to every waiting request
            found = dict.fromkeys(batch, e)
        finally:  # even on KeyboardInterrupt/SystemExit: never leave the others waiting
            self._cond.acquire()
            missing = RuntimeError("end offset lookup interrupted")
            self._answers.update({tp: found.get(tp, missing) for tp in batch})
            self._done = self._started  # (none starts while one runs)
            self._cond.notify_all()
