"""Decoded partition data kept between requests, so repeated and sliding windows skip the broker.

Kafka never changes a message below a partition's end, so a range read once stays true. A
`Segment` is a run [start, end) of one partition's offsets, decoded, plus an *anchor*: a time
that every message at an offset below `start` is stamped before (`start` was the answer of
`offsets_for_times(anchor)`). That makes the broker's offset lookups exact from memory: for any
`t >= anchor`, the first message stamped at or after `t` is the first entry whose running
maximum of Kafka timestamps reaches `t` - the answer `offsets_for_times(t)` gives. When the
segment ended at a timestamp lookup's answer, it also keeps that time (`after`: the message at
`end` is stamped at or after it), so a closed window ending there needs no broker either.

A range starting inside a segment (or right at its end) is folded from it, the segment extended
with what lies past its end (a window sliding forward); any other range is kept whole, in place
of the segments it overlaps. Bounded by messages (least recently used first) and by age, so a
topic's retention or deletion shows within `IOTPIPE_QUERY_CACHE_SECONDS`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from iotpipe.query.aggregate import SeenReadings, WindowAggregate
from iotpipe.query.range_scan import PartitionRange, RangeRows, Row
from iotpipe.query.segment import Segment


class RangeRead:
    """One partition range of a request: the segment holding its start, if any, and the gap
    past that segment's end (or the whole range) to read from the broker. A closed range ends
    at the first message stamped at or after its `stop` (see PartitionRange): where the segment
    holds it, else it is read, from the planned end on."""

    def __init__(self, start: int, end: int, stop: int | None, seg: Segment | None) -> None:
        known = None if stop is None or seg is None else seg.first_stamped(stop, seg.index(start))
        self.start, self.end, self.seg = start, end if known is None else known, seg
        held_to = start if seg is None else min(seg.end, self.end)
        confirmed = stop is None or known is not None
        self.gap = (held_to, self.end) if held_to < self.end or not confirmed else None

    def fill(self, cache: WindowCache, topic: str, partition: int, read: RangeRows,
             from_ms: int) -> None:
        """Keep the gap's messages as read (the range ends where the read did): appended to the
        segment held, or else a segment of their own anchored at `from_ms` (the range's start
        answered its lookup); see Segment."""
        assert self.gap is not None
        rows, self.end, after = read
        if self.seg is None:
            self.seg = cache.add(topic, partition, self.start, self.end, from_ms, rows, after)
        else:
            cache.extend(topic, partition, self.seg, rows, self.end, after)
        self.gap = None

    def fold(self, agg: WindowAggregate, seen: SeenReadings, lo: int, hi: int) -> None:
        assert self.gap is None and self.seg is not None
        self.seg.fold(agg, seen, self.start, self.end, lo, hi)


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
        self._names: dict[str, str] = {}  # one str object per device name
        self._asked: dict[tuple[str, int], deque[tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def messages(self) -> int:
        with self._lock:
            return self._held()

    def _live(self, key: tuple[str, int]) -> list[Segment]:
        old = time.monotonic() - self.max_age_s
        for s in [s for s in self._segments.get(key, []) if s.born < old]:
            self._drop(key, s)
        return self._segments.get(key, [])

    def admits(self, ranges: Iterable[PartitionRange]) -> bool:
        """Whether to read these ranges through memory: it holds or touches one, or a recent
        request asked for one overlapping it. Keeping windows that are never asked again
        (random history) would cost a copy each and evict those that are."""
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

    def read(self, topic: str, partition: int, start: int, end: int,
             stop: int | None = None) -> RangeRead:
        """What memory holds of [start, end) now: the segment holding offset `start` (or ending
        right at it; of two, the one reaching further)."""
        with self._lock:
            seg = max((s for s in self._live((topic, partition)) if s.start <= start <= s.end),
                      key=lambda s: s.end, default=None)
            if seg is not None:
                seg.used = time.monotonic()
            return RangeRead(start, end, stop, seg)

    def add(self, topic: str, partition: int, start: int, end: int, anchor: int,
            rows: list[Row], after: int | None = None) -> Segment:
        """Keep the decoded messages of [start, end) as a segment (`anchor`, `after`: see
        Segment), in place of the segments it overlaps; returns it, kept or not."""
        seg = Segment(start, start, anchor, time.monotonic(), self.lateness_ms)
        seg.append(self._named(rows), end, after)
        key = (topic, partition)
        with self._lock:  # unless another request has kept what holds `start` meanwhile
            if not any(s.start < start < s.end for s in self._live(key)):
                self._segments.setdefault(key, []).append(seg)
                self._settle(key, seg)
        return seg

    def extend(self, topic: str, partition: int, seg: Segment, rows: list[Row], end: int,
               after: int | None) -> None:
        """Grow `seg` (see Segment.grow); a segment dropped meanwhile is grown all the same (the
        request holding it folds its range from it), but no longer kept."""
        new = self._named(rows)
        with self._lock:
            seg.grow(new, end, after)
            if seg in self._live((topic, partition)):
                self._settle((topic, partition), seg)

    def _named(self, rows: list[Row]) -> list[Row]:
        """The rows with one str object per device name (they may stay held a long time)."""
        names = self._names
        if len(names) > self.max_messages:  # device ids that came and went
            names.clear()
        return [(o, k, d if d is None else names.setdefault(d, d), q, t, v)
                for o, k, d, q, t, v in rows]

    def _settle(self, key: tuple[str, int], seg: Segment) -> None:
        """After `seg` was kept or grew: the segments it overlaps or runs into go, what one
        holds past its end appended to it (in offset order: lateness is judged as in a scan
        from its start); then the least recently used go while too many messages are held."""
        seg.used = time.monotonic()
        for s in [s for s in self._segments[key] if s is not seg
                  and s.start <= seg.end and seg.start < s.end]:
            self._drop(key, s)
            if seg.start <= s.start:  # (one starting before seg would hold seg's start)
                if s.end > seg.end:
                    seg.born = min(seg.born, s.born)
                seg.grow(s.rows(s.index(seg.end)), s.end, s.after)
        held = self._held()
        while held > self.max_messages:
            key, old = min(((k, s) for k, segs in self._segments.items() for s in segs),
                           key=lambda ks: ks[1].used)
            self._drop(key, old)
            held -= len(old)

    def _held(self) -> int:
        return sum(len(s) for segs in self._segments.values() for s in segs)

    def _drop(self, key: tuple[str, int], seg: Segment) -> None:
        segs = self._segments.get(key, [])
        if seg in segs:
            segs.remove(seg)
        if not segs:
            self._segments.pop(key, None)
