"""Decoded partition data kept between requests, so repeated and sliding windows skip the broker.

Kafka never changes a message below a partition's end, so a range read once stays true. A
`Segment` is a run [start, end) of one partition's offsets, decoded, plus an *anchor*: a time
that every message at an offset below `start` is stamped before (`start` was the answer of
`offsets_for_times(anchor)`). That makes the broker's offset lookups exact from memory: for any
`t >= anchor`, the first message stamped at or after `t` is the first entry whose running
maximum of Kafka timestamps reaches `t` - the answer `offsets_for_times(t)` gives. When the
segment ended at a timestamp lookup's answer, it also keeps that time (`after`: the message at
`end` is stamped at or after it), so a closed window ending there needs no broker either.

Bounded by a number of messages (least recently used segments go first) and by an age, so a
topic's retention or its deletion is seen within `IOTPIPE_QUERY_CACHE_SECONDS`. A range enters
only once it is asked for again (see `admits`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from iotpipe.query.aggregate import SeenReadings, WindowAggregate
from iotpipe.query.range_scan import PartitionRange, Row
from iotpipe.query.segment import Segment


class RangeRead:
    """One partition range of a request: the part memory holds, and the gap to fetch."""

    def __init__(self, start: int, end: int, seg: Segment | None) -> None:
        self.start = start
        held_to = start if seg is None else min(seg.end, end)
        self.pieces = [] if seg is None else [(seg, start, held_to)]
        self.gap = (held_to, end) if held_to < end else None

    def fill(self, cache: WindowCache, topic: str, partition: int, rows: list[Row],
             from_ms: int, after: int | None) -> None:
        """Keep the gap's messages (`rows`); `from_ms`: the window's start (when nothing was
        held, the range's start is its lookup's answer: the anchor); `after`: see Segment."""
        assert self.gap is not None
        start, end = self.gap
        seg = cache.add(topic, partition, start, end, None if self.pieces else from_ms, rows,
                        after, self.pieces[-1][0] if self.pieces else None)
        if seg.start <= self.start:  # one segment now holds the whole range
            self.pieces = [(seg, self.start, end)]
        else:
            self.pieces.append((seg, start, end))
        self.gap = None

    def fold(self, agg: WindowAggregate, seen: SeenReadings, lo: int, hi: int) -> None:
        assert self.gap is None
        for seg, start, end in self.pieces:
            seg.fold(agg, seen, start, end, lo, hi)


@dataclass(frozen=True)
class Bounds:
    """What memory knows of a window in one partition: its start offset, maybe its end."""

    start: int
    end: int | None


ASKED = 64  # ranges remembered per partition, to know a range asked for again


class WindowCache:
    """Segments per (topic, partition); thread-safe; shared by the threads of one worker."""

    def __init__(self, max_messages: int, max_age_s: float, lateness_ms: int) -> None:
        self.max_messages, self.max_age_s = max_messages, max_age_s
        self.lateness_ms = lateness_ms  # the segments note which readings came late
        self._segments: dict[tuple[str, int], list[Segment]] = {}
        self._size = 0
        self._names: dict[str, str] = {}  # one str object per device name
        self._asked: dict[tuple[str, int], deque[tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def messages(self) -> int:
        return self._size

    def _live(self, key: tuple[str, int]) -> list[Segment]:
        old = time.monotonic() - self.max_age_s
        for s in [s for s in self._segments.get(key, []) if s.born < old]:
            self._drop(key, s)
        return self._segments.get(key, [])

    def admits(self, ranges: Iterable[PartitionRange]) -> bool:
        """Whether to read these ranges through memory: it holds or touches one of them, or a
        recent request asked for one overlapping it (a window asked again: a dashboard
        refreshing, a window sliding forward). Ranges asked for the first time are read from
        the broker and only remembered: keeping windows that are never asked again (random
        history) would cost a copy each and evict what is."""
        again = False
        with self._lock:
            for r in ranges:
                key = (r.topic, r.partition)
                asked = self._asked.setdefault(key, deque(maxlen=ASKED))
                again = again or any(s.start <= r.end and r.start <= s.end
                                     for s in self._live(key)) \
                    or any(a < r.end and r.start < b for a, b in asked)
                asked.append((r.start, r.end))
        return again

    def bounds(self, topic: str, partition: int, from_ms: int,
               stop_ms: int | None) -> Bounds | None:
        """Start (and, if `stop_ms` is given, end) offsets of a window from memory, or None."""
        with self._lock:
            seg = max((s for s in self._live((topic, partition)) if s.anchor <= from_ms),
                      key=lambda s: s.start, default=None)  # anchors grow with start offsets
            if seg is None or (start := seg.first_stamped(from_ms)) is None:
                return None
            seg.used = time.monotonic()
            end = seg.first_stamped(stop_ms, seg.index(start)) if stop_ms is not None else None
            return Bounds(start, end)

    def read(self, topic: str, partition: int, start: int, end: int) -> RangeRead:
        """What memory holds of [start, end): the segment holding offset `start` (or ending
        right at it) up to its end now (another thread may extend it later)."""
        with self._lock:
            for s in self._live((topic, partition)):
                if s.start <= start <= s.end:
                    s.used = time.monotonic()
                    return RangeRead(start, end, s)
            return RangeRead(start, end, None)

    def add(self, topic: str, partition: int, start: int, end: int, anchor: int | None,
            rows: list[Row], after: int | None = None, held: Segment | None = None) -> Segment:
        """Store the decoded messages of [start, end), merged with the segments it overlaps or
        touches; returns a segment holding [start, end). Without an anchor (a range read past
        the end of a segment, `held`) they can only extend the segment to their left: if that
        one is gone, the returned segment is not stored, and judges lateness on from `held`'s
        readings before `start`. `after`: see Segment."""
        names = self._names
        if len(names) > self.max_messages:  # device ids that came and went
            names.clear()
        rows = [(o, k, d if d is None else names.setdefault(d, d), q, t, v)
                for o, k, d, q, t, v in rows]
        key = (topic, partition)
        with self._lock:
            segs = self._live(key)
            touching = sorted((s for s in segs if s.start <= end and start <= s.end),
                              key=lambda s: s.start)
            left = touching[0] if touching and touching[0].start < start else None
            if left is not None and len(touching) == 1:
                # the common case, a window sliding forward: extend in place
                if end > left.end:
                    new = [r for r in rows if r[0] >= left.end]
                    left.append(new, end, after)
                    self._size += len(new)
                elif end == left.end and after is not None:
                    left.after = max(after, left.after or after)
                left.used = time.monotonic()
                merged = left
            elif anchor is None and left is None:
                merged = Segment(start, start, 0, 0.0, self.lateness_ms)
                if held is not None:
                    merged.arrival.newest = max(held.ts[:held.index(start)],
                                                default=merged.arrival.newest)
                merged.append(rows, end, after)
            else:
                merged = self._merge(touching, left, start, end, anchor, rows, after)
                for s in touching:
                    self._drop(key, s)
                self._segments.setdefault(key, []).append(merged)
                self._size += len(merged)
                merged.used = time.monotonic()
            self._evict()
            return merged

    def _merge(self, touching: list[Segment], left: Segment | None, start: int, end: int,
               anchor: int | None, rows: list[Row], after: int | None) -> Segment:
        lo = min([start, *(s.start for s in touching)])
        hi = max([end, *(s.end for s in touching)])
        # the leftmost part's anchor; at an equal start either holds, the later one says more
        if left is not None:
            anchor = left.anchor
        else:
            assert anchor is not None
            anchor = max([anchor, *(s.anchor for s in touching if s.start == start)])
        born = min([time.monotonic(), *(s.born for s in touching)])
        merged = Segment(lo, lo, anchor, born, self.lateness_ms)
        ordered: list[Row] = []
        for s in touching:
            if s.start < start:
                ordered += [r for r in s.rows() if r[0] < start]
        ordered += rows
        for s in touching:
            if s.end > end:
                ordered += s.rows(s.index(end))
        known = [b for b in [after if end == hi else None, *(s.after for s in touching
                                                             if s.end == hi)] if b is not None]
        merged.append(ordered, hi, max(known, default=None))
        return merged

    def _drop(self, key: tuple[str, int], seg: Segment) -> None:
        segs = self._segments.get(key, [])
        if seg in segs:
            segs.remove(seg)
            self._size -= len(seg)
        if not segs:
            self._segments.pop(key, None)

    def _evict(self) -> None:
        while self._size > self.max_messages:
            key, seg = min(((k, s) for k, segs in self._segments.items() for s in segs),
                           key=lambda ks: ks[1].used)
            self._drop(key, seg)
