"""Reading one time window out of Kafka: offset lookups for all topics, then range scans.

The offsets bracket the window: a partition is read from the first message stamped at or after
`from` (`offsets_for_times`) up to, not including, the first message stamped after
`to + allowed lateness` (or its end). One scan reads several partitions with one consumer
(librdkafka fetches them in parallel).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import TopicMetadata

from iotpipe.core.settings import KafkaSettings
from iotpipe.query.end_offsets import TP, EndOffsets
from iotpipe.query.errors import BrokerUnavailable, UnknownTopic, is_missing
from iotpipe.query.range_scan import (
    BATCH,
    PartitionRange,
    RangeRows,
    RangeScan,
    ScanJob,
    SensorScan,
)
from iotpipe.query.window_cache import Bounds, WindowCache

log = logging.getLogger(__name__)
WARM_UP_S = 5.0  # a worker starting while the broker is away or slow waits no longer
PARTITIONS_MAX_AGE_S = 30.0  # a topic's partitions are listed again after this
# a partition's leader has just changed (a broker restarted, leadership moved): the error makes
# librdkafka refresh its metadata, so the same lookup asked again a moment later is answered
LEADER_MOVED = frozenset({KafkaError.FENCED_LEADER_EPOCH, KafkaError.UNKNOWN_LEADER_EPOCH,
                          KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})


def split(ranges: list[PartitionRange], groups: int) -> list[tuple[PartitionRange, ...]]:
    """Ranges in at most `groups` jobs of about equal message counts (largest first, greedy).
    A partition is never cut: a device's readings stay in one job, so its repeats are found
    there."""
    bins: list[list[PartitionRange]] = [[] for _ in range(max(1, min(groups, len(ranges))))]
    sizes = [0] * len(bins)
    for r in sorted(ranges, key=lambda r: r.end - r.start, reverse=True):
        i = sizes.index(min(sizes))
        bins[i].append(r)
        sizes[i] += r.end - r.start
    return [tuple(b) for b in bins if b]


@dataclass(frozen=True)
class Fetch:
    """How much a consumer fetches per partition and keeps queued ahead of the scan."""

    kib: int  # per partition and fetch
    queued_messages: int  # per partition, before it stops fetching ahead


# librdkafka prefetches each assigned partition until the scan lets go of it, so these bound
# what is read past a range's end (CPU of these shared cores) and a reader process's memory;
# chosen per scan by its longest range (`_fetch_for`). Trials: benchmarks.md, Load, and "fetch
# sizes of the reader processes".
SHORT = Fetch(16, BATCH)  # a range of about one consume() batch: a small window
WINDOW = Fetch(64, 10_000)
MEDIUM = Fetch(256, 10_000)  # the reader processes'
LARGE = Fetch(512, 10_000)


def consumer_config(kafka: KafkaSettings, fetch: Fetch) -> dict[str, object]:
    return kafka.client_config() | {
        "group.id": "iotpipe-query",  # never joined: partitions are assigned by hand
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",  # retention removed the start: read what is left
        "fetch.wait.max.ms": 10,  # a long-poll on an idle partition would delay the next scan
        "max.partition.fetch.bytes": fetch.kib * 1024,
        # one response may carry 16 partitions' fetches, so that the partitions a scan has
        # assigned arrive in one round trip, not one per MiB (>= message.max.bytes)
        "fetch.max.bytes": max(16 * fetch.kib, 1024) * 1024,
        "queued.max.messages.kbytes": max(2 * fetch.kib, 512),
        "queued.min.messages": fetch.queued_messages,
        # how long a partition's next fetch waits while the queue is over these limits (default
        # 1 s). Messages prefetched past the previous scan's ranges stay queued after unassign()
        # until consume() drops them, so a scan's first fetch often waits this long: keep it short
        "fetch.queue.backoff.ms": 1,
        "socket.timeout.ms": max(1000, int(kafka.timeout_s * 1000)),
        "log_level": 3,
        "logger": logging.getLogger("iotpipe.kafka.consumer"),
    }


@contextmanager
def _kafka_call(what: str) -> Iterator[None]:
    """librdkafka errors of a lookup as UnknownTopic or BrokerUnavailable (also a decorator)."""
    try:
        yield
    except KafkaException as e:
        raise _as_error(e.args[0] if e.args else None, what) from None


def _leader_moved(err: object) -> bool:
    return isinstance(err, KafkaError) and err.code() in LEADER_MOVED


def _as_error(err: object, what: str) -> UnknownTopic | BrokerUnavailable:
    if is_missing(err):
        return UnknownTopic(str(err))
    return BrokerUnavailable(f"{what}: {err}")


class KafkaWindowReader:
    """Owns consumers, reused across requests; every broker call has a timeout."""

    def __init__(self, kafka: KafkaSettings, large: bool = False, kept_s: float = 0.0) -> None:
        self._fetches = (MEDIUM, LARGE) if large else (SHORT, WINDOW)
        self._configs = {f: consumer_config(kafka, f) for f in self._fetches}
        self._timeout = kafka.timeout_s
        self._idle: dict[Fetch, queue.SimpleQueue[Consumer]] = {
            f: queue.SimpleQueue() for f in self._fetches}
        self._partitions: dict[str, tuple[float, list[int]]] = {}
        # while the partitions cannot be listed, a list this recent is used (the window cache's
        # age: no window it holds was read with an older one); when a listing last failed
        self._kept_s, self._unlisted = kept_s, -math.inf
        self._ends = EndOffsets(self._end_offsets, kafka.timeout_s)
        # one per window read at the same time (the service reads up to 8: see its _parts)
        self._lookups = cf.ThreadPoolExecutor(8, thread_name_prefix="lookup")

    def close(self) -> None:
        self._lookups.shutdown(wait=False, cancel_futures=True)
        for idle in self._idle.values():
            with suppress(queue.Empty):  # (a request may take one meanwhile)
                while True:
                    idle.get_nowait().close()

    @contextmanager
    def _consumer(self, fetch: Fetch | None = None) -> Iterator[Consumer]:
        """An idle consumer with these fetch sizes (lookups: the first kind), or a new one."""
        fetch = fetch or self._fetches[0]
        try:
            consumer = self._idle[fetch].get_nowait()
        except queue.Empty:
            consumer = Consumer(self._configs[fetch])
        try:
            yield consumer
        finally:
            self._idle[fetch].put(consumer)

    def _fetch_for(self, job: ScanJob) -> Fetch:
        """The smallest fetch kind whose prefetch covers the job's longest range."""
        longest = max((r.end - r.start for r in job.ranges), default=0)
        return next((f for f in self._fetches if longest <= f.queued_messages),
                    self._fetches[-1])

    @_kafka_call("reading topic metadata")
    def partitions(self, topic: str) -> list[int]:
        cached = self._partitions.get(topic)
        now = time.monotonic()
        age = now - cached[0] if cached else math.inf
        # a listing failed lately (the broker away): no topic is listed again (a wait for the
        # timeout) for a while, a list still usable is used
        failing = now - self._unlisted < PARTITIONS_MAX_AGE_S
        if cached and (age < PARTITIONS_MAX_AGE_S or (failing and age <= self._kept_s)):
            return cached[1]
        try:
            with self._consumer() as c:
                meta = c.list_topics(topic, timeout=self._timeout).topics[topic]
        except KafkaException:
            if cached is None or age > self._kept_s:
                raise
            self._unlisted = time.monotonic()  # the window cache's windows are still answered
            return cached[1]
        return self._learn(topic, meta)

    def _learn(self, topic: str, meta: TopicMetadata) -> list[int]:
        """Remember a topic's partitions from its metadata (raises the topic's error)."""
        if meta.error is not None:
            raise KafkaException(meta.error)
        parts = sorted(meta.partitions)
        self._partitions[topic] = (time.monotonic(), parts)
        return parts

    def warm_up(self, topics: list[str], consumers: dict[Fetch, int]) -> None:
        """Connect idle consumers (how many of each fetch kind) to the partitions' leaders and
        learn the partitions before the first requests; gives up at the first failure or after
        WARM_UP_S (the broker away, a topic not created yet): the requests connect then."""
        deadline = time.monotonic() + WARM_UP_S

        def left() -> float:  # of the warm-up's time, for the next broker call
            return max(0.1, deadline - time.monotonic())

        new_consumers: list[tuple[Fetch, Consumer]] = []
        try:
            for fetch, n in consumers.items():
                new_consumers += [(fetch, Consumer(self._configs[fetch])) for _ in range(n)]
            if not new_consumers:
                return
            listed = new_consumers[0][1].list_topics(timeout=left()).topics
            ends = [TopicPartition(t, p, OFFSET_END)
                    for t in topics for p in self._learn(t, listed[t])]
            for _, c in new_consumers:  # a lookup asks each partition's leader: connects to it
                c.offsets_for_times(ends, timeout=left())
        except (KafkaException, KeyError) as e:
            log.info("consumers not warmed up (%r): the first requests connect them", e)
        finally:
            for fetch, c in new_consumers:
                self._idle[fetch].put(c)

    @_kafka_call("looking up offsets")
    def _offsets_at(self, partitions: list[TP], ts_ms: int) -> dict[TP, int]:
        """The first offset stamped at or after `ts_ms` (-1: none) of partitions of any topics,
        in one request."""
        if not partitions:
            return {}
        found = self._offsets_for_times([TopicPartition(t, p, ts_ms) for t, p in partitions])
        for tp in found:
            if tp.error is not None:
                raise KafkaException(tp.error)
        return {(tp.topic, tp.partition): tp.offset for tp in found}

    def _offsets_for_times(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """librdkafka's lookup, asked again while a partition's leader has just moved, until
        the timeout."""
        deadline = time.monotonic() + self._timeout
        pause = 0.05
        while True:
            with self._consumer() as c:
                try:
                    found = c.offsets_for_times(
                        partitions, timeout=max(0.1, deadline - time.monotonic()))
                    moved = any(_leader_moved(tp.error) for tp in found)
                except KafkaException as e:
                    if not _leader_moved(e.args[0] if e.args else None):
                        raise
                    found, moved = [], True
            if not moved:
                return found
            if time.monotonic() + pause >= deadline:
                raise BrokerUnavailable("a partition's leader moved and was not found again "
                                        "within the timeout")
            time.sleep(pause)
            pause = min(2 * pause, 1.0)

    def plan(self, topics: dict[str, str], from_ms: int, to_ms: int, lateness_ms: int,
             cache: WindowCache | None = None) -> dict[str, list[PartitionRange]]:
        """Per sensor ({topic: sensor}), the partition ranges that cover [from, to] with its
        allowed lateness; a sensor whose topic does not exist is left out."""
        try:
            return self._plan(topics, from_ms, to_ms, lateness_ms, cache)
        except UnknownTopic:  # deleted since its partitions were listed: list them again
            self._partitions.clear()
        try:
            return self._plan(topics, from_ms, to_ms, lateness_ms, cache)
        except UnknownTopic as e:
            raise BrokerUnavailable(f"a topic vanished during the lookup: {e}") from None

    def _plan(self, topics: dict[str, str], from_ms: int, to_ms: int, lateness_ms: int,
              cache: WindowCache | None) -> dict[str, list[PartitionRange]]:
        plans: dict[str, list[PartitionRange]] = {}
        parts: list[TP] = []
        for topic, sensor in topics.items():
            with suppress(UnknownTopic):
                parts += [(topic, p) for p in self.partitions(topic)]
                plans[sensor] = []
        # the first time past the window and its lateness, if it has passed; a window still
        # open ends at the partition's end, without the broker's costly timestamp lookup
        past = to_ms + lateness_ms + 1
        stop = past if past <= time.time() * 1000 else None
        known = {(t, p): b for t, p in parts if cache is not None
                 and (b := cache.bounds(t, p, from_ms, stop)) is not None}
        starts, ends = self._offsets(parts, known, from_ms, stop)
        live = [tp for tp in parts if starts[tp] >= 0]  # -1: nothing stamped at/after `from`
        # -1 or not looked up (an open window): the partition's end, whatever comes until then
        open_ended = [tp for tp in live if ends.get(tp, -1) < 0]
        if open_ended:  # shared with the other requests asking now
            try:
                ends |= self._ends.get(open_ended)
            except TimeoutError:
                raise BrokerUnavailable("end offset lookup did not finish") from None
        for t, p in live:
            if ends[(t, p)] > starts[(t, p)] or (t, p) not in open_ended:
                # (a closed range's end is read to be confirmed: see RangeScan._end_in;
                # a marker may answer its lookup before a message answers its start's)
                plans[topics[t]].append(PartitionRange(
                    t, topics[t], p, starts[(t, p)], max(ends[(t, p)], starts[(t, p)]),
                    None if (t, p) in open_ended else stop))
        return plans

    def _offsets(self, parts: list[TP], known: dict[TP, Bounds], from_ms: int,
                 stop_ms: int | None) -> tuple[dict[TP, int], dict[TP, int]]:
        """Start offsets, and end offsets if the window is closed (`stop_ms`), from the cache
        where it knows them, else from the broker: every end at the same time as the starts
        (one round trip, not two), before the starts say which partitions hold anything."""
        starts = {tp: b.start for tp, b in known.items()}
        ends = {tp: b.end for tp, b in known.items() if b.end is not None}
        starts_wanted = [tp for tp in parts if tp not in known]
        if stop_ms is None or not (ends_wanted := [tp for tp in parts if tp not in ends]):
            return starts | self._offsets_at(starts_wanted, from_ms), ends
        if not starts_wanted:  # one request: no need for a thread
            return starts, ends | self._offsets_at(ends_wanted, stop_ms)
        ends_lookup = self._lookups.submit(self._offsets_at, ends_wanted, stop_ms)
        try:
            starts |= self._offsets_at(starts_wanted, from_ms)
            ends |= ends_lookup.result(timeout=2 * self._timeout + 1)
        except (cf.TimeoutError, cf.CancelledError):  # (cancelled: the service is stopping)
            raise BrokerUnavailable("offset lookup did not finish") from None
        finally:
            ends_lookup.cancel()  # not started yet when the starts failed: not needed
        return starts, ends

    @_kafka_call("looking up end offsets")
    def _end_offsets(self, partitions: list[TP]) -> dict[TP, int | Exception]:
        """End offsets of partitions of several topics in one call; an error of one partition
        (e.g. its topic was deleted) is that partition's answer only."""
        found = self._offsets_for_times([TopicPartition(t, p, OFFSET_END) for t, p in partitions])
        return {(tp.topic, tp.partition): tp.offset if tp.error is None
                else _as_error(tp.error, "looking up end offsets") for tp in found}

    @_kafka_call("reading partitions")
    def scan(self, job: ScanJob) -> dict[str, SensorScan]:
        """Stream the messages of the job's ranges into one aggregate per sensor."""
        return self._run(job).results()

    @_kafka_call("reading partitions")
    def read_rows(self, job: ScanJob) -> dict[tuple[str, int], RangeRows]:
        """Every decoded message of the job's ranges, per (topic, partition)."""
        return self._run(replace(job, record=True)).rows()

    def _run(self, job: ScanJob) -> RangeScan:
        with self._consumer(self._fetch_for(job)) as c:
            scan = RangeScan(job)
            scan.run(c)
            return scan
