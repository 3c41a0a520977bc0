"""Reading one time window out of Kafka: offset lookups per topic, then parallel range scans.

The offsets bracket the window: a partition is read from the first message stamped at or after
`from` (`offsets_for_times`) up to, not including, the first message stamped after
`to + allowed lateness` (or its end). Between the two, only readings whose `ts` lies in
[from, to] count; the aggregate streams over the messages, so memory does not grow with the
window. One scan reads several partitions with one consumer (librdkafka fetches them in
parallel); consumers are created once and reassigned for every scan.
"""

from __future__ import annotations

import functools
import logging
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from iotpipe.core import wire
from iotpipe.core.settings import KafkaSettings
from iotpipe.query.aggregate import SeqSet, WindowAggregate

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

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


@dataclass(frozen=True)
class ScanJob:
    """One unit of parallel work: some partition ranges, read by one consumer."""

    ranges: tuple[PartitionRange, ...]
    from_ms: int
    to_ms: int
    deadline: float  # time.time() after which the scan gives up


def split(ranges: list[PartitionRange], groups: int) -> list[tuple[PartitionRange, ...]]:
    """Ranges in `groups` jobs of about equal message counts (largest first, greedy)."""
    bins: list[list[PartitionRange]] = [[] for _ in range(max(1, min(groups, len(ranges))))]
    sizes = [0] * len(bins)
    for r in sorted(ranges, key=lambda r: r.end - r.start, reverse=True):
        i = sizes.index(min(sizes))
        bins[i].append(r)
        sizes[i] += r.end - r.start
    return [tuple(b) for b in bins if b]


def consumer_config(kafka: KafkaSettings, large: bool) -> dict[str, object]:
    """Fetch sizes bound what is read past a range's end (librdkafka prefetches until the
    scan pauses the partition): small for the many small windows, larger for throughput."""
    fetch_kib = 1024 if large else 64
    return kafka.client_config() | {
        "group.id": "iotpipe-query",  # never joined: partitions are assigned by hand
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",  # retention removed the start: read what is left
        "fetch.wait.max.ms": 10,  # a long-poll on an idle partition would delay the next scan
        "max.partition.fetch.bytes": fetch_kib * 1024,
        "fetch.max.bytes": max(8 * fetch_kib, 1024) * 1024,  # >= message.max.bytes
        "queued.max.messages.kbytes": 8 * fetch_kib,
        "queued.min.messages": 10_000,
        "fetch.queue.backoff.ms": 10,  # the default 1 s would stall a scan whose queue filled
        "socket.timeout.ms": max(1000, int(kafka.timeout_s * 1000)),
        "log_level": 3,
        "logger": logging.getLogger("iotpipe.kafka.consumer"),
    }


def _kafka_call(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Turn librdkafka errors of a lookup into UnknownTopic or BrokerUnavailable."""

    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return fn(*args, **kwargs)
            except KafkaException as e:
                err = e.args[0] if e.args else None
                if isinstance(err, KafkaError) and err.code() in (
                        KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                    raise UnknownTopic(str(err)) from None
                raise BrokerUnavailable(f"{what}: {err}") from None
        return inner
    return wrap


class KafkaWindowReader:
    """Owns consumers, reused across requests; every broker call has a timeout."""

    def __init__(self, kafka: KafkaSettings, large: bool = False) -> None:
        self._config = consumer_config(kafka, large)
        self._timeout = kafka.timeout_s
        self._idle: queue.SimpleQueue[Consumer] = queue.SimpleQueue()
        self._partitions: dict[str, tuple[float, list[int]]] = {}

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    @contextmanager
    def _consumer(self) -> Iterator[Consumer]:
        try:
            consumer = self._idle.get_nowait()
        except queue.Empty:
            consumer = Consumer(self._config)
        try:
            yield consumer
        finally:
            self._idle.put(consumer)

    @_kafka_call("reading topic metadata")
    def partitions(self, topic: str, max_age_s: float = 30.0) -> list[int]:
        cached = self._partitions.get(topic)
        if cached and time.monotonic() - cached[0] < max_age_s:
            return cached[1]
        with self._consumer() as c:
            meta = c.list_topics(topic, timeout=self._timeout).topics[topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        parts = sorted(meta.partitions)
        self._partitions[topic] = (time.monotonic(), parts)
        return parts

    @_kafka_call("looking up offsets")
    def _offsets_at(self, topic: str, parts: list[int], ts_ms: int) -> dict[int, int]:
        with self._consumer() as c:
            found = c.offsets_for_times([TopicPartition(topic, p, ts_ms) for p in parts],
                                        timeout=self._timeout)
        for tp in found:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return {tp.partition: tp.offset for tp in found}

    def plan(self, topic: str, sensor: str, from_ms: int, to_ms: int,
             lateness_ms: int) -> list[PartitionRange]:
        """The partition ranges that cover [from, to] with its allowed lateness."""
        parts = self.partitions(topic)
        starts = self._offsets_at(topic, parts, from_ms)
        live = [p for p in parts if starts[p] >= 0]  # -1: nothing stamped at/after `from`
        if not live:
            return []
        stop_ms = to_ms + lateness_ms + 1
        # a window still open to late readings ends at the partition's end: no message can be
        # stamped after it yet, so the (costly, for the broker) timestamp lookup is skipped
        ends = ({p: -1 for p in live} if stop_ms > time.time() * 1000
                else self._offsets_at(topic, live, stop_ms))
        open_ended = [p for p in live if ends[p] < 0]
        if open_ended:
            ends |= self._offsets_at(topic, open_ended, OFFSET_END)
        return [PartitionRange(topic, sensor, p, starts[p], ends[p])
                for p in live if ends[p] > starts[p]]

    @_kafka_call("reading partitions")
    def scan(self, job: ScanJob) -> dict[str, WindowAggregate]:
        """Stream the messages of the job's ranges into one aggregate per sensor."""
        with self._consumer() as c:
            tps = [TopicPartition(r.topic, r.partition, r.start) for r in job.ranges]
            c.assign(tps)
            try:
                return _RangeScan(job).run(c)
            finally:
                c.unassign()


class _Range:
    __slots__ = ("agg", "end", "last", "seen", "sensor")

    def __init__(self, r: PartitionRange, agg: WindowAggregate,
                 seen: dict[bytes, SeqSet]) -> None:
        self.end, self.last, self.sensor = r.end, r.end - 1, r.sensor.encode()
        self.agg, self.seen = agg, seen


class _RangeScan:
    """The hot loop: decode, keep readings inside the window, count each (device, seq) once."""

    def __init__(self, job: ScanJob) -> None:
        self.job = job
        self.aggs: dict[str, WindowAggregate] = {}
        seen: dict[str, dict[bytes, SeqSet]] = {}
        self.ranges: dict[tuple[str, int], _Range] = {}
        for r in job.ranges:
            agg = self.aggs.setdefault(r.sensor, WindowAggregate())
            agg.scanned += r.end - r.start
            self.ranges[(r.topic, r.partition)] = _Range(r, agg, seen.setdefault(r.sensor, {}))

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
            try:
                device, seq, ts, value = fields(msg.value(), r.sensor)
            except malformed as e:
                _count_malformed(r.agg, str(e))
            else:
                if lo <= ts <= hi:
                    seqs = r.seen.get(device)
                    if seqs is None:
                        seqs = r.seen[device] = SeqSet()
                    if seqs.add(seq):
                        r.agg.add(value)
                    else:
                        r.agg.duplicates += 1
            if offset == r.last:
                open_.discard(key)
                finished.append(TopicPartition(*key))
        if finished:  # stop prefetching what lies past the range
            c.incremental_unassign(finished)
        return used

    def _close_finished(self, c: Consumer, open_: set[tuple[str, int]]) -> None:
        for tp in c.position([TopicPartition(t, p) for t, p in open_]):
            if tp.offset >= self.ranges[(tp.topic, tp.partition)].end:
                open_.discard((tp.topic, tp.partition))


def _count_malformed(agg: WindowAggregate, reason: str) -> None:
    agg.malformed += 1
    reason = reason.split(":")[0]
    agg.malformed_reasons[reason] = agg.malformed_reasons.get(reason, 0) + 1
