"""Rule 3 of a window (README): a reading is late when a reading stamped at least the allowed
lateness after it was written to its partition before it. The one place that judges it, for the
query service and the stream alike."""

from __future__ import annotations

from collections.abc import Sequence

RUN = 64  # readings checked at once by LateFilter


class LateFilter:
    """Which readings of one partition, read in offset order, reached it within the allowed
    lateness: a reading stamped at or before the newest stamp read before it, minus the
    lateness, came after the pipeline moved past its time - the stream's watermark rule, kept
    per partition, so a late reading is left out whichever window or part of one is read. The
    query service reads a window's partitions with it; the stream judges each micro-batch's
    readings with it (Spark's watermark judges them against earlier batches)."""

    __slots__ = ("lateness", "newest")

    def __init__(self, lateness_ms: int) -> None:
        self.lateness, self.newest = lateness_ms, -(2**63)

    def on_time(self, ts: Sequence[int]) -> list[bool] | None:
        """One flag per reading; None when all are on time (the common case, no list made).
        Checked a run at a time with C's min and max: a run whose oldest reading is within the
        lateness of everything read before it (and of itself) is on time; only other runs are
        walked reading by reading."""
        lateness, newest = self.lateness, self.newest
        flags: list[bool] | None = None
        for k in range(0, len(ts), RUN):
            run = ts[k:k + RUN]
            top = max(run)
            if top < newest:
                top = newest
            if min(run) > top - lateness:
                newest = top
                continue
            for i, t in enumerate(run, k):
                if t > newest:
                    newest = t
                elif t <= newest - lateness:
                    if flags is None:
                        flags = [True] * len(ts)
                    flags[i] = False
        self.newest = newest
        return flags
