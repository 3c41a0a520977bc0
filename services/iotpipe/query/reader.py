"""Reading one time window out of Kafka: offset lookups per topic, then one scan per partition.

The offsets bracket the window: the scan starts at the first message stamped at or after
`from` (`offsets_for_times`) and stops before the first message stamped after
`to + allowed lateness` (or at the end of the partition). Between the two, only readings whose
`ts` lies in [from, to] count; the aggregate streams over the messages, so memory does not grow
with the window. Consumers are created once and reassigned for every scan.
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
class PartitionScan:
    """One unit of parallel work: read offsets [start, end) of one partition."""

    topic: str
    sensor: str
    partition: int
    start: int
    end: int
    from_ms: int
    to_ms: int
    deadline: float  # time.time() after which the scan gives up


def consumer_config(kafka: KafkaSettings) -> dict[str, object]:
    return kafka.client_config() | {
        "group.id": "iotpipe-query",  # never joined: partitions are assigned by hand
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",  # retention removed the start: read what is left
        "fetch.wait.max.ms": 10,  # a long-poll on an idle partition would delay the next scan
        "fetch.max.bytes": 8 * 2**20,
        "max.partition.fetch.bytes": 4 * 2**20,
        "queued.max.messages.kbytes": 16 * 1024,
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

    def __init__(self, kafka: KafkaSettings) -> None:
        self._config = consumer_config(kafka)
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

    def plan(self, topic: str, sensor: str, from_ms: int, to_ms: int, lateness_ms: int,
             deadline: float) -> list[PartitionScan]:
        """The partition scans that cover [from, to] with its allowed lateness."""
        parts = self.partitions(topic)
        starts = self._offsets_at(topic, parts, from_ms)
        live = [p for p in parts if starts[p] >= 0]  # -1: nothing stamped at/after `from`
        if not live:
            return []
        ends = self._offsets_at(topic, live, to_ms + lateness_ms + 1)
        open_ended = [p for p in live if ends[p] < 0]
        if open_ended:
            ends |= self._offsets_at(topic, open_ended, OFFSET_END)
        return [PartitionScan(topic, sensor, p, starts[p], ends[p], from_ms, to_ms, deadline)
                for p in live if ends[p] > starts[p]]

    def scan(self, job: PartitionScan) -> WindowAggregate:
        """Stream the messages of one partition range into an aggregate."""
        agg = WindowAggregate()
        with self._consumer() as c:
            c.assign([TopicPartition(job.topic, job.partition, job.start)])
            try:
                _consume_range(c, job, agg)
            finally:
                c.unassign()
        return agg


def _consume_range(c: Consumer, job: PartitionScan, agg: WindowAggregate) -> None:
    seen: dict[str, SeqSet] = {}
    lo, hi, sensor, end = job.from_ms, job.to_ms, job.sensor, job.end
    last = end - 1
    decode, malformed = wire.decode, wire.MalformedReading
    add = agg.add
    scanned = 0
    next_offset = job.start
    while True:
        remaining = job.deadline - time.time()
        if remaining <= 0:
            raise ScanTimeout(f"{job.topic}[{job.partition}] not read before the deadline")
        # consume() returns early only once it has as many messages as asked for
        batch = c.consume(max(1, min(BATCH, end - next_offset)), min(POLL_S, remaining))
        if not batch:
            pos = c.position([TopicPartition(job.topic, job.partition)])[0].offset
            if pos >= end:  # e.g. the range ends in transaction markers
                break
            continue
        done = False
        for msg in batch:
            if msg.error() is not None:
                _raise_fetch_error(msg.error())
            offset = msg.offset()
            next_offset = offset + 1
            if offset >= end:
                done = True
                break
            scanned += 1
            try:
                r = decode(msg.value(), sensor)
            except malformed as e:
                agg.malformed += 1
                reason = str(e).split(":")[0]
                agg.malformed_reasons[reason] = agg.malformed_reasons.get(reason, 0) + 1
                if offset == last:
                    done = True
                    break
                continue
            if lo <= r.ts <= hi:
                seqs = seen.get(r.device)
                if seqs is None:
                    seqs = seen[r.device] = SeqSet()
                if seqs.add(r.seq):
                    add(r.value)
                else:
                    agg.duplicates += 1
            if offset == last:
                done = True
                break
        if done:
            break
    agg.scanned = scanned


def _raise_fetch_error(err: KafkaError) -> None:
    raise BrokerUnavailable(f"fetching: {err.str()}")
