"""Reading assigned partition ranges with one consumer: the hot loop of the query service.

Each message is decoded once; readings inside the window are folded into one aggregate per
sensor, each (device, seq) once. In record mode the decoded messages are kept instead, for the
window cache to answer this and later windows from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from iotpipe.core import wire
from iotpipe.query.aggregate import SeqSet, WindowAggregate
from iotpipe.query.window_cache import Row

BATCH = 5000
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


class _Range:
    __slots__ = ("agg", "counted", "end", "last", "rows", "seen", "sensor")

    def __init__(self, r: PartitionRange, agg: WindowAggregate,
                 seen: dict[bytes, SeqSet], record: bool) -> None:
        self.end, self.last, self.sensor = r.end, r.end - 1, r.sensor.encode()
        self.agg, self.seen = agg, seen
        self.rows: list[Row] | None = [] if record else None
        self.counted: list[int | float] = []  # values of this batch, for agg.add_many


class RangeScan:
    """The hot loop: decode, keep readings inside the window, count each (device, seq) once."""

    def __init__(self, job: ScanJob) -> None:
        self.job = job
        self.aggs: dict[str, WindowAggregate] = {}
        seen: dict[str, dict[bytes, SeqSet]] = {}
        self.ranges: dict[tuple[str, int], _Range] = {}
        for r in job.ranges:
            agg = self.aggs.setdefault(r.sensor, WindowAggregate())
            agg.scanned += r.end - r.start
            self.ranges[(r.topic, r.partition)] = _Range(r, agg, seen.setdefault(r.sensor, {}),
                                                         job.record)

    def run(self, c: Consumer) -> dict[str, WindowAggregate]:
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
        return self.aggs

    def rows(self) -> dict[tuple[str, int], list[Row]]:
        return {key: r.rows for key, r in self.ranges.items() if r.rows is not None}

    def _fold(self, c: Consumer, batch: list, open_: set[tuple[str, int]]) -> int:
        lo, hi = self.job.from_ms, self.job.to_ms
        fields, malformed = wire.decode_fields, wire.MalformedReading
        ranges = self.ranges
        used = 0
        finished: list[TopicPartition] = []
        for msg in batch:
            err = msg.error()
            if err is not None:
                raise BrokerUnavailable(f"fetching: {err.str()}")
            key = (msg.topic(), msg.partition())
            r = ranges[key]
            offset = msg.offset()
            if offset >= r.end:
                if key in open_:
                    open_.discard(key)
                    finished.append(TopicPartition(*key))
                continue
            used += 1
            rows = r.rows
            try:
                device, seq, ts, value = fields(msg.value(), r.sensor)
            except malformed as e:
                if rows is None:
                    r.agg.count_malformed(malformed_reason(e))
                else:
                    rows.append((offset, msg.timestamp()[1], None, 0, 0, malformed_reason(e)))
            else:
                if rows is not None:
                    rows.append((offset, msg.timestamp()[1], device, seq, ts, value))
                elif lo <= ts <= hi:
                    seqs = r.seen.get(device)
                    if seqs is None:
                        seqs = r.seen[device] = SeqSet()
                    his = seqs.his
                    if his and his[-1] + 1 == seq:  # SeqSet.add's common case, inline
                        his[-1] = seq
                        r.counted.append(value)
                    elif seqs.add(seq):
                        r.counted.append(value)
                    else:
                        r.agg.duplicates += 1
            if offset == r.last:
                open_.discard(key)
                finished.append(TopicPartition(*key))
        for r in ranges.values():
            if r.counted:
                r.agg.add_many(r.counted)
                r.counted.clear()
        if finished:  # stop prefetching what lies past the range
            c.incremental_unassign(finished)
        return used

    def _close_finished(self, c: Consumer, open_: set[tuple[str, int]]) -> None:
        for tp in c.position([TopicPartition(t, p) for t, p in open_]):
            if tp.offset >= self.ranges[(tp.topic, tp.partition)].end:
                open_.discard((tp.topic, tp.partition))


def malformed_reason(e: Exception) -> str:
    """The kind of defect, without the message's content (it goes to a log line)."""
    return str(e).split(":")[0]

