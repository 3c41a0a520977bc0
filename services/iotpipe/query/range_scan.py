"""Reading assigned partition ranges with one consumer: the hot loop of the query service.

Each message is decoded once; readings inside the window are folded into one aggregate per
sensor, each (device, seq) once. In record mode the decoded messages are kept instead, for the
window cache to answer this and later windows from.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Message, TopicPartition

from iotpipe.core import wire
from iotpipe.query.aggregate import SeqSet, WindowAggregate
from iotpipe.query.window_cache import Row

# messages per consume(): measured on 10^5 readings/sensor, 1000 keeps a batch's messages, its
# joined text and its columns in the CPU caches (faster than 5000) and each reader ~10 MiB smaller
BATCH = 1000
POLL_S = 0.5


class BrokerUnavailable(RuntimeError):
    """The broker did not answer within the timeout."""


class ScanTimeout(RuntimeError):
    """The window could not be read before the request deadline."""


class UnknownTopic(LookupError):
    """The sensor's topic does not exist on the broker."""


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
    record: bool = False  # keep every decoded message (for the window cache), not a total


@dataclass
class SensorScan:
    """What one scan read of one sensor: the aggregate, and the (device, seq) it counted, so
    that scans of the same sensor can be checked for a reading both counted."""

    agg: WindowAggregate = field(default_factory=WindowAggregate)
    seen: dict[bytes, SeqSet] = field(default_factory=dict)


class _Range:
    __slots__ = ("agg", "end", "last", "rows", "seen", "sensor")

    def __init__(self, r: PartitionRange, scan: SensorScan, record: bool) -> None:
        self.end, self.last, self.sensor = r.end, r.end - 1, r.sensor.encode()
        self.agg, self.seen = scan.agg, scan.seen
        self.rows: list[Row] | None = [] if record else None


class RangeScan:
    """The hot loop: decode, keep readings inside the window, count each (device, seq) once."""

    def __init__(self, job: ScanJob) -> None:
        self.job = job
        self.sensors: dict[str, SensorScan] = {}
        self.ranges: dict[tuple[str, int], _Range] = {}
        for r in job.ranges:
            scan = self.sensors.setdefault(r.sensor, SensorScan())
            scan.agg.scanned += r.end - r.start
            self.ranges[(r.topic, r.partition)] = _Range(r, scan, job.record)

    def run(self, c: Consumer) -> dict[str, SensorScan]:
        open_ = set(self.ranges)
        pending = sum(r.end - r.start for r in self.job.ranges)
        while open_:
            remaining = self.job.deadline - time.time()
            if remaining <= 0:
                raise ScanTimeout(f"{len(open_)} partitions not read before the deadline")
            # consume() returns early only once it has as many messages as asked for
            batch = c.consume(max(1, min(BATCH, pending)), min(POLL_S, remaining))
            if not batch:
                self._close_finished(c, open_)  # e.g. ranges ending in transaction markers
                continue
            pending -= self._fold(c, batch, open_)
        return self.sensors

    def rows(self) -> dict[tuple[str, int], list[Row]]:
        return {key: r.rows for key, r in self.ranges.items() if r.rows is not None}

    def _fold(self, c: Consumer, batch: list[Message], open_: set[tuple[str, int]]) -> int:
        """Fold one consumed batch, a run of messages of one partition at a time; returns how
        many messages were inside the ranges."""
        for err in filter(None, map(Message.error, batch)):
            raise BrokerUnavailable(f"fetching: {err.str()}")
        used = 0
        finished: list[TopicPartition] = []
        topics, partitions = list(map(Message.topic, batch)), list(map(Message.partition, batch))
        for key, i, j in _runs(topics, partitions):
            r = self.ranges[key]
            if batch[j - 1].offset() >= r.last:  # the run reaches the range's last offset
                if key in open_:
                    open_.discard(key)
                    finished.append(TopicPartition(*key))
                j = bisect_left(batch, r.end, i, j, key=Message.offset)
            if i < j:
                used += j - i
                self._fold_run(r, batch[i:j])
        if finished:  # stop prefetching what lies past the range
            c.incremental_unassign(finished)
        return used

    def _fold_run(self, r: _Range, msgs: list[Message]) -> None:
        """Messages of one partition inside its range: decoded as columns when all are in the
        canonical form (the common case), else one by one."""
        cols = wire.decode_columns(list(map(Message.value, msgs)), r.sensor)
        if cols is None:
            self._fold_each(r, msgs)
        elif r.rows is not None:
            stamps = [stamp for _, stamp in map(Message.timestamp, msgs)]
            r.rows.extend(zip(map(Message.offset, msgs), stamps, cols.devices, cols.seqs,
                              cols.ts(), cols.values, strict=True))
        else:
            lo, hi = self.job.from_ms, self.job.to_ms
            r.agg.add_readings(r.seen, lo, hi, cols.devices, cols.seqs,
                               None if cols.within(lo, hi) else cols.ts(), cols.values)

    def _fold_each(self, r: _Range, msgs: list[Message]) -> None:
        """The slow path, for a run holding a message not in the canonical form: each message
        decoded on its own, so a malformed one is counted and the others still count."""
        fields, malformed = wire.decode_fields, wire.MalformedReading
        decoded = []
        for msg, offset in zip(msgs, map(Message.offset, msgs), strict=True):
            try:
                device, seq, ts, value = fields(msg.value(), r.sensor)
            except malformed as e:
                if r.rows is None:
                    r.agg.count_malformed(malformed_reason(e))
                else:
                    r.rows.append((offset, msg.timestamp()[1], None, 0, 0, malformed_reason(e)))
                continue
            if r.rows is not None:
                r.rows.append((offset, msg.timestamp()[1], device, seq, ts, value))
            else:
                decoded.append((device, seq, ts, value))
        if decoded:
            r.agg.add_readings(r.seen, self.job.from_ms, self.job.to_ms,
                               *zip(*decoded, strict=True))

    def _close_finished(self, c: Consumer, open_: set[tuple[str, int]]) -> None:
        for tp in c.position([TopicPartition(t, p) for t, p in open_]):
            if tp.offset >= self.ranges[(tp.topic, tp.partition)].end:
                open_.discard((tp.topic, tp.partition))


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


def malformed_reason(e: Exception) -> str:
    """The kind of defect, without the message's content (it goes to a log line)."""
    return str(e).split(":")[0]

