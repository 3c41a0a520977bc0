"""Reading assigned partition ranges with one consumer: the hot loop of the query service.

Each message is decoded once; readings inside the window are folded into one aggregate per
sensor, each (device, seq) once. In record mode the decoded messages are kept instead, for the
window cache to answer this and later windows from. See `ScanJob.per_partition` for large scans.
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from confluent_kafka import Consumer, Message, TopicPartition

from iotpipe.core import wire
from iotpipe.core.lateness import LateFilter
from iotpipe.query.aggregate import SeenReadings, WindowAggregate
from iotpipe.query.errors import BrokerUnavailable, ScanTimeout

BATCH = 1000  # messages per consume(): a batch and its decoded readings stay in the CPU caches
PARTITIONS_AT_ONCE = 2  # of a per-partition scan: while one ends and the next starts, one reads
POLL_S = 0.5
# a consumed message that is not an error event always has these (the stubs say "or None")
_topic = cast(Callable[[Message], str], Message.topic)
_partition = cast(Callable[[Message], int], Message.partition)
_offset = cast(Callable[[Message], int], Message.offset)
_timestamp = cast(Callable[[Message], tuple[int, int]], Message.timestamp)


# one decoded message: (offset, Kafka timestamp, device or None if malformed, seq, ts,
# value - or the reason it is malformed)
Row = tuple[int, int, str | None, int, int, "int | float | str"]


@dataclass(frozen=True)
class PartitionRange:
    """Offsets [start, end) of one partition: the part of it that can hold the window."""

    topic: str
    sensor: str
    partition: int
    start: int
    end: int
    # the message at `end` is stamped at or after this (the end came from that timestamp
    # lookup); None when `end` is the partition's end
    end_stamp: int | None = None


@dataclass(frozen=True)
class ScanJob:
    """One unit of parallel work: some partition ranges, read by one consumer."""

    ranges: tuple[PartitionRange, ...]
    from_ms: int
    to_ms: int
    deadline: float  # time.time() after which the scan gives up
    lateness_ms: int  # a reading this far behind its partition is late (see LateFilter)
    record: bool = False  # keep every decoded message (for the window cache), not a total
    # each partition de-duplicated on its own and read PARTITIONS_AT_ONCE at a time: right
    # when no device writes to two partitions, which the caller checks from the fingerprints
    per_partition: bool = False


@dataclass
class SensorScan:
    """What one scan read of one sensor: the aggregate, and a fingerprint (hash) of each device
    it counted per de-duplication state (the scan's, or each partition's): see the service."""

    agg: WindowAggregate
    fingerprints: list[array[int]]


def _fingerprints(seen: SeenReadings) -> array[int]:
    return array("q", map(hash, seen.devices()))


class _Sensor:
    __slots__ = ("agg", "fingerprints", "seen")

    def __init__(self) -> None:
        self.agg = WindowAggregate()
        self.seen = SeenReadings()  # the scan's state, unless it has one per partition
        self.fingerprints: list[array[int]] = []  # of its partitions' own states, once read


class _Range:
    __slots__ = ("agg", "end", "last", "late", "left", "rows", "seen", "sensor", "start")

    def __init__(self, r: PartitionRange, sensor: _Sensor, job: ScanJob) -> None:
        self.end, self.last, self.sensor = r.end, r.end - 1, r.sensor
        self.start = TopicPartition(r.topic, r.partition, r.start)
        self.left = r.end - r.start  # offsets not read yet (a transaction marker holds one too)
        self.agg, self.late = sensor.agg, LateFilter(job.lateness_ms)
        self.seen = SeenReadings() if job.per_partition else sensor.seen
        self.rows: list[Row] | None = [] if job.record else None


class RangeScan:
    """The hot loop: decode, keep readings inside the window, count each (device, seq) once."""

    def __init__(self, job: ScanJob) -> None:
        self.job = job
        self.sensors: dict[str, _Sensor] = {}
        self.ranges: dict[tuple[str, int], _Range] = {}
        for r in job.ranges:
            sensor = self.sensors.setdefault(r.sensor, _Sensor())
            sensor.agg.scanned += r.end - r.start
            self.ranges[(r.topic, r.partition)] = _Range(r, sensor, job)
        # popped from the end, so the largest first: a per-partition scan ends on short ranges
        self.waiting = [(r.topic, r.partition)
                        for r in sorted(job.ranges, key=lambda r: r.end - r.start)]
        self.open: set[tuple[str, int]] = set()

    def run(self, c: Consumer) -> None:
        """Read the ranges: all assigned at once, or (`per_partition`) PARTITIONS_AT_ONCE at a
        time, the next assigned as one finishes. Leaves the consumer unassigned."""
        at_once = PARTITIONS_AT_ONCE if self.job.per_partition else len(self.waiting)
        try:
            c.assign(self._next(at_once))  # whatever the consumer had assigned is replaced
            while self.open:
                self._consume(c)
                if self.waiting and len(self.open) < at_once:
                    c.incremental_assign(self._next(at_once))
        finally:
            c.unassign()

    def _next(self, at_once: int) -> list[TopicPartition]:
        """Open the next waiting ranges, up to `at_once` open; returns where each starts."""
        keys = [self.waiting.pop() for _ in range(min(len(self.waiting),
                                                      at_once - len(self.open)))]
        self.open.update(keys)
        return [self.ranges[key].start for key in keys]

    def _consume(self, c: Consumer) -> None:
        """Fold one consume() batch."""
        remaining = self.job.deadline - time.time()
        if remaining <= 0:
            unread = len(self.open) + len(self.waiting)
            raise ScanTimeout(f"{unread} partitions not read before the deadline")
        # consume() returns early only once it has as many messages as asked for
        asked = max(1, min(BATCH, sum(self.ranges[key].left for key in self.open)))
        batch = c.consume(asked, min(POLL_S, remaining))
        if batch:
            self._fold(c, batch)
        if self.open and (len(batch) < asked or asked < BATCH):  # some may end in markers
            self._close_finished(c)

    def results(self) -> dict[str, SensorScan]:
        return {name: SensorScan(s.agg, s.fingerprints if self.job.per_partition
                                 else [_fingerprints(s.seen)])
                for name, s in self.sensors.items()}

    def rows(self) -> dict[tuple[str, int], list[Row]]:
        return {key: r.rows for key, r in self.ranges.items() if r.rows is not None}

    def _fold(self, c: Consumer, batch: list[Message]) -> None:
        """Fold one consumed batch, a run of messages of one partition at a time."""
        for err in filter(None, map(Message.error, batch)):
            raise BrokerUnavailable(f"fetching: {err.str()}")
        finished: list[TopicPartition] = []
        topics, partitions = list(map(_topic, batch)), list(map(_partition, batch))
        for key, i, j in _runs(topics, partitions):
            r = self.ranges[key]
            if _offset(batch[j - 1]) >= r.last:  # the run reaches the range's last offset
                if key in self.open:
                    self.open.discard(key)
                    finished.append(TopicPartition(*key))
                j = bisect_left(batch, r.end, i, j, key=_offset)
            if i < j:
                r.left -= j - i
                self._fold_run(r, batch[i:j])
        if finished:  # stop prefetching what lies past the range
            self._finish(c, finished)

    def _finish(self, c: Consumer, finished: list[TopicPartition]) -> None:
        """Let go of ranges read to their end; in a per-partition scan, keep only their
        devices' fingerprints (their states are what it frees to hold a few at a time)."""
        c.incremental_unassign(finished)
        if self.job.per_partition:
            for tp in finished:
                r = self.ranges[(tp.topic, tp.partition)]
                self.sensors[r.sensor].fingerprints.append(_fingerprints(r.seen))
                r.seen = SeenReadings()

    def _fold_run(self, r: _Range, msgs: list[Message]) -> None:
        """One partition's messages inside its range, decoded together; malformed ones counted."""
        stamps = [t for _, t in map(_timestamp, msgs)]
        got, malformed = wire.decode_many(list(map(Message.value, msgs)), r.sensor, stamps,
                                          self.job.lateness_ms)
        if r.rows is not None:
            self._keep_rows(r.rows, msgs, stamps, got, malformed)
            return
        for reason in malformed.values():
            r.agg.count_malformed(reason)
        r.agg.add_readings(r.seen, r.late.on_time(got.ts), self.job.from_ms, self.job.to_ms,
                           *got)

    @staticmethod
    def _keep_rows(rows: list[Row], msgs: list[Message], stamps: list[int],
                   got: wire.Readings, malformed: dict[int, str]) -> None:
        valid = zip(*got, strict=True)
        for k, (msg, stamp) in enumerate(zip(msgs, stamps, strict=True)):
            reason = malformed.get(k)
            rows.append((_offset(msg), stamp, *next(valid)) if reason is None
                        else (_offset(msg), stamp, None, 0, 0, reason))

    def _close_finished(self, c: Consumer) -> None:
        """Finish the open ranges whose consumer position passed their end without a message
        at their last offset (e.g. ranges ending in transaction markers)."""
        finished = [tp for tp in c.position([TopicPartition(t, p) for t, p in self.open])
                    if tp.offset >= self.ranges[(tp.topic, tp.partition)].end]
        if finished:
            self.open.difference_update((tp.topic, tp.partition) for tp in finished)
            self._finish(c, finished)


def _runs(topics: list[str], partitions: list[int]
          ) -> Iterator[tuple[tuple[str, int], int, int]]:
    """(partition, start, end) of each run of consecutive messages of one partition."""
    n = len(partitions)
    if partitions.count(partitions[0]) == n and topics.count(topics[0]) == n:
        yield (topics[0], partitions[0]), 0, n  # the common case: one partition's fetch
        return
    start = 0
    for i in range(1, n):
        if partitions[i] != partitions[start] or topics[i] != topics[start]:
            yield (topics[start], partitions[start]), start, i
            start = i
    yield (topics[start], partitions[start]), start, n

