"""Reading assigned partition ranges with one consumer: the hot loop of the query service.

Each message is decoded once; readings inside the window are folded into one aggregate per
sensor, each (device, seq) once. In record mode the decoded messages are kept instead, for the
window cache to answer this and later windows from. See `ScanJob.per_partition` for large scans.
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, cast

from confluent_kafka import Consumer, Message, TopicPartition

from iotpipe.core import wire
from iotpipe.core.lateness import LateFilter
from iotpipe.query.aggregate import SeenReadings, WindowAggregate
from iotpipe.query.errors import BrokerUnavailable, ScanTimeout

BATCH = 1000  # messages per consume(): a batch and its decoded readings stay in the CPU caches
PARTITIONS_AT_ONCE = 2  # of a per-partition scan: while one ends and the next starts, one reads
# consume() waits this long at most for a batch it asked for in full: offsets that hold no
# message (transaction markers) make a range's last batch short
POLL_S = 0.01
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
    # a closed window's range: the first message stamped at or after this (the lookup's
    # answer `end`, unless that offset holds no reading: see RangeScan._end_in); None when
    # `end` is the partition's end
    end_stamp: int | None = None


class RangeRows(NamedTuple):
    """What a scan in record mode read of a range: its messages, where it ended, and the
    range's stop if it ended at a message stamped at or after it (see PartitionRange)."""

    rows: list[Row]
    end: int
    end_stamp: int | None


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
    __slots__ = ("agg", "end", "late", "limit", "next", "read_on", "rows", "seen", "sensor",
                 "start", "stop")

    def __init__(self, r: PartitionRange, sensor: _Sensor, job: ScanJob) -> None:
        self.end, self.stop, self.sensor = r.end, r.end_stamp, r.sensor
        self.start = TopicPartition(r.topic, r.partition, r.start)
        # offsets below `limit` are read (a transaction marker holds one too): a closed range
        # reads the message at its end as well, which confirms the end
        self.next, self.limit = r.start, r.end + (r.end_stamp is not None)
        self.read_on = False  # past its end, to the partition's end when first asked
        self.agg, self.late = sensor.agg, LateFilter(job.lateness_ms)
        self.seen = SeenReadings() if job.per_partition else sensor.seen
        self.rows: list[Row] | None = [] if job.record else None


class RangeScan:
    def __init__(self, job: ScanJob) -> None:
        self.job = job
        self.sensors: defaultdict[str, _Sensor] = defaultdict(_Sensor)
        self.ranges = {(r.topic, r.partition): _Range(r, self.sensors[r.sensor], job)
                       for r in job.ranges}
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
        remaining = self.job.deadline - time.time()
        if remaining <= 0:
            unread = len(self.open) + len(self.waiting)
            raise ScanTimeout(f"{unread} partitions not read before the deadline")
        # consume() returns early only once it has as many messages as asked for
        asked = max(1, min(BATCH, sum(self.ranges[key].limit - self.ranges[key].next
                                      for key in self.open)))
        batch = c.consume(asked, min(POLL_S, remaining))
        if batch:
            self._fold(c, batch)
        if self.open and (len(batch) < asked or asked < BATCH):  # some may end in markers
            self._close_finished(c)

    def results(self) -> dict[str, SensorScan]:
        return {name: SensorScan(s.agg, s.fingerprints if self.job.per_partition
                                 else [_fingerprints(s.seen)])
                for name, s in self.sensors.items()}

    def rows(self) -> dict[tuple[str, int], RangeRows]:
        return {key: RangeRows(r.rows, r.end, r.stop) for key, r in self.ranges.items()
                if r.rows is not None}

    def _fold(self, c: Consumer, batch: list[Message]) -> None:
        """Fold one consumed batch, a run of messages of one partition at a time."""
        for err in filter(None, map(Message.error, batch)):
            raise BrokerUnavailable(f"fetching: {err.str()}")
        finished: list[TopicPartition] = []
        topics, partitions = list(map(_topic, batch)), list(map(_partition, batch))
        for key, i, j in _runs(topics, partitions):
            if key not in self.open:  # fetched past the range's end before it was let go
                continue
            r = self.ranges[key]
            # the run reaches the range's last offset (a read-on range's: any)
            if _offset(batch[j - 1]) >= min(r.end, r.limit - 1):
                end = self._end_in(c, key, r, batch, i, j)
                if end is not None:
                    self.open.discard(key)
                    finished.append(TopicPartition(*key))
                    j = end
            if i < j:
                r.next = _offset(batch[j - 1]) + 1
                self._fold_run(r, batch[i:j])
        if finished:  # stop prefetching what lies past the range
            self._finish(c, finished)

    def _end_in(self, c: Consumer, key: tuple[str, int], r: _Range, batch: list[Message],
                i: int, j: int) -> int | None:
        """Where in the run batch[i:j] the range ends, or None if it goes on past it. A closed
        range ends at the first message from its `end` on stamped at or after its stop: the
        lookup's answer, unless that offset holds no reading (a transaction marker, stamped
        when its transaction committed: after the readings before it, long after when they
        were written late); then it reads on."""
        k = bisect_left(batch, r.end, i, j, key=_offset)
        if r.stop is None:
            return k
        read_to = _offset(batch[j - 1]) + 1
        if r.read_on and read_to > r.limit:  # past the partition's end as first given
            j, read_to = bisect_left(batch, r.limit, k, j, key=_offset), r.limit
        k = next((x for x in range(k, j) if _timestamp(batch[x])[1] >= r.stop), j)
        if k < j:
            r.end = _offset(batch[k])
            return k
        return None if self._read_on(c, key, r, read_to) else j

    def _read_on(self, c: Consumer, key: tuple[str, int], r: _Range, read_to: int) -> bool:
        """A closed range holds no message stamped at or after its stop below `read_to`:
        whether it reads on (to the partition's end as the broker gives it the first time, so
        that a partition still being written is not followed)."""
        r.end = read_to
        if read_to >= r.limit and not r.read_on:
            remaining = max(0.1, self.job.deadline - time.time())
            r.limit = c.get_watermark_offsets(TopicPartition(*key), timeout=remaining)[1]
            r.read_on = True
        if read_to < r.limit:
            return True
        r.stop = None  # it ends at the partition's end: no message there is stamped yet
        return False

    def _finish(self, c: Consumer, finished: list[TopicPartition]) -> None:
        """Let go of ranges read to their end; in a per-partition scan, keep only their
        devices' fingerprints (their states are what it frees to hold a few at a time)."""
        c.incremental_unassign(finished)
        for tp in finished:
            r = self.ranges[(tp.topic, tp.partition)]
            r.agg.scanned += r.end - r.start.offset
            if self.job.per_partition:
                self.sensors[r.sensor].fingerprints.append(_fingerprints(r.seen))
                r.seen = SeenReadings()

    def _fold_run(self, r: _Range, msgs: list[Message]) -> None:
        """One partition's messages inside its range, decoded together; malformed ones counted."""
        stamps = [t for _, t in map(_timestamp, msgs)]
        got, malformed = wire.decode_many(list(map(Message.value, msgs)), r.sensor, stamps,
                                          self.job.lateness_ms)
        if r.rows is not None:  # record mode: each message kept, a malformed one with its reason
            valid = zip(*got, strict=True)
            for k, (msg, stamp) in enumerate(zip(msgs, stamps, strict=True)):
                reason = malformed.get(k)
                r.rows.append((_offset(msg), stamp, *next(valid)) if reason is None
                              else (_offset(msg), stamp, None, 0, 0, reason))
            return
        for reason in malformed.values():
            r.agg.count_malformed(reason)
        r.agg.add_readings(r.seen, r.late.on_time(got.ts), self.job.from_ms, self.job.to_ms,
                           *got)

    def _close_finished(self, c: Consumer) -> None:
        """Finish the open ranges whose consumer position passed their end without a message
        at their last offset (e.g. ranges ending in transaction markers)."""
        finished = []
        for tp in c.position([TopicPartition(t, p) for t, p in self.open]):
            key = (tp.topic, tp.partition)
            r = self.ranges[key]
            if tp.offset >= r.limit and (r.stop is None
                                         or not self._read_on(c, key, r, tp.offset)):
                finished.append(tp)
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

