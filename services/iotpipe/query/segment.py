"""A run of one partition's offsets, decoded column-wise: the unit the window cache keeps."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable
from typing import cast

from iotpipe.core.lateness import LateFilter
from iotpipe.query.aggregate import SeenReadings, WindowAggregate
from iotpipe.query.range_scan import Row

NO_TS = -(2**63)


class Segment:
    """Decoded messages of offsets [start, end) of one partition, in offset order."""

    __slots__ = ("after", "anchor", "arrival", "bad", "born", "devices", "end", "late",
                 "offsets", "runmax", "seqs", "start", "ts", "used", "values")

    def __init__(self, start: int, end: int, anchor: int, born: float, lateness_ms: int) -> None:
        self.start, self.end, self.anchor, self.born = start, end, anchor, born
        self.used = born  # last time a request read it (time.monotonic), for LRU eviction
        self.after: int | None = None
        self.offsets, self.runmax = array("q"), array("q")
        self.ts, self.seqs = array("q"), array("q")
        self.devices: list[str | None] = []
        self.values: list[int | float | str] = []
        self.bad = array("q")  # indices of malformed messages (ts NO_TS: in no window)
        # indices of late readings (see LateFilter: noted once here, where they are read in
        # offset order; late from the segment's start is late from any range's start inside
        # it, for readings of a window starting there)
        self.late = array("q")
        self.arrival = LateFilter(lateness_ms)

    def __len__(self) -> int:
        return len(self.offsets)

    def append(self, rows: Iterable[Row], end: int, after: int | None) -> None:
        """Add the messages of [self.end, end), in offset order."""
        top = self.runmax[-1] if self.runmax else -(2**63)
        first = len(self.offsets)
        for offset, kts, device, seq, ts, value in rows:
            top = kts if kts > top else top
            k = len(self.offsets)
            if device is None:
                self.bad.append(k)
                ts = NO_TS
            self.offsets.append(offset)
            self.runmax.append(top)
            self.ts.append(ts)
            self.seqs.append(seq)
            self.devices.append(device)
            self.values.append(value)
        valid = [k for k in range(first, len(self.offsets)) if self.devices[k] is not None]
        on_time = self.arrival.on_time([self.ts[k] for k in valid])
        if on_time is not None:
            self.late.extend(k for k, ok in zip(valid, on_time, strict=True) if not ok)
        self.end, self.after = end, after

    def grow(self, rows: Iterable[Row], end: int, after: int | None) -> None:
        """Append the messages of `rows` past this segment's end, up to `end` (it may already
        reach further); at the same end, only a known `after` is added."""
        if end > self.end:
            self.append([r for r in rows if r[0] >= self.end], end, after)
        elif end == self.end and after is not None:
            self.after = max(after, self.after or after)

    def rows(self, lo: int) -> Iterable[Row]:
        """The messages from index `lo`, to append to a segment holding those before them
        (their Kafka timestamp is the running maximum: the same maximum there)."""
        return zip(self.offsets[lo:], self.runmax[lo:], self.devices[lo:], self.seqs[lo:],
                   self.ts[lo:], self.values[lo:], strict=True)

    def first_stamped(self, t: int, lo: int = 0) -> int | None:
        """Offset of the first message stamped at or after t (t >= anchor), if known here."""
        i = bisect_left(self.runmax, t, lo)
        if i < len(self):
            return self.offsets[i]
        return self.end if self.after is not None and t <= self.after else None

    def index(self, offset: int) -> int:
        return bisect_left(self.offsets, offset)

    def fold(self, agg: WindowAggregate, seen: SeenReadings, start: int, end: int,
             lo: int, hi: int) -> None:
        """Aggregate the readings of offsets [start, end) stamped in [lo, hi], each (device,
        seq) once per `seen`: the same as a scan of that range from the broker."""
        agg.scanned += end - start
        i, j = self.index(start), self.index(end)
        # malformed messages (device None, value their reason) are stamped NO_TS: the window
        # filter drops them before their device or value is read
        values = cast(list[int | float], self.values)
        for k in self.bad[bisect_left(self.bad, i):bisect_left(self.bad, j)]:
            agg.count_malformed(str(values[k]))
        late = set(self.late[bisect_left(self.late, i):bisect_left(self.late, j)])
        on_time = [k not in late for k in range(i, j)] if late else None  # late: rare
        agg.add_readings(seen, on_time, lo, hi, cast(list[str], self.devices[i:j]),
                         self.seqs[i:j], self.ts[i:j], values[i:j])
