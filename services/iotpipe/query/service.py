"""Answers a MetricsRequest: the whole final buckets of the window from the rollups (see
`rollups`), the rest from the readings, every part, topic and partition read in parallel.

Scans of small windows run in threads (their time is network latency), through the worker's
WindowCache once asked for again. Scans of large windows are CPU-bound (decoding JSON), so with
`IOTPIPE_QUERY_READERS > 0` they run in that many reader processes, and are not cached.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import logging
import math
import multiprocessing
import os
import random
import threading
import time
from array import array
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import TypeVar

from iotpipe.core.settings import KafkaSettings, Settings
from iotpipe.query import metrics as prom
from iotpipe.query.aggregate import SeenReadings, WindowAggregate
from iotpipe.query.errors import BrokerUnavailable, ReaderLost, ScanTimeout, UnknownTopic
from iotpipe.query.range_scan import PartitionRange, RangeRows, ScanJob, SensorScan
from iotpipe.query.reader import LARGE, MEDIUM, SHORT, WINDOW, KafkaWindowReader, split
from iotpipe.query.request import MetricsRequest
from iotpipe.query.retention import Retention, retention_note
from iotpipe.query.rollups import RollupIndex, RollupPlan
from iotpipe.query.timestamps import format_ms
from iotpipe.query.window_cache import WindowCache

log = logging.getLogger(__name__)
T = TypeVar("T")

SMALL_SCAN = 20_000  # messages; below this a window is read in threads of the worker
# messages; from here a scan de-duplicates each partition on its own (see `_fold_scanned`)
PER_PARTITION_SCAN = 100_000
# a scan allocates many short-lived objects and no reference cycles: the default collector
# (every 700 allocations) only costs reader processes time, so they collect far less often
READER_GC_THRESHOLDS = (50_000, 20, 100)
_process_reader: KafkaWindowReader | None = None


def _init_reader_process(kafka: KafkaSettings, topics: list[str]) -> None:
    global _process_reader
    exit_with_parent()
    _process_reader = KafkaWindowReader(kafka, large=True)
    _process_reader.warm_up(topics, {MEDIUM: 1, LARGE: 1})  # one scan at a time
    gc.freeze()
    gc.set_threshold(*READER_GC_THRESHOLDS)


def exit_with_parent(every_s: float = 0.5) -> None:
    """End this process once the one that started it is gone: a worker killed with SIGKILL
    (gunicorn's timeout, the kernel's OOM killer) cannot stop its reader processes itself."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _reader_ready(_: int) -> bool:
    return _process_reader is not None


def _scan_in_reader_process(job: ScanJob) -> dict[str, SensorScan]:
    assert _process_reader is not None, "reader process not initialised"
    return _process_reader.scan(job)


class ScanPool:
    """Where scans run (see the module's doc; threads of one worker share its consumers).
    Rebuilt if a reader process dies."""

    def __init__(self, settings: Settings, reader: KafkaWindowReader) -> None:
        self._kafka = settings.kafka
        self._topics = [settings.topic(sensor) for sensor in settings.sensors]
        self.processes = settings.query_readers
        self._reader = reader
        self._threads = cf.ThreadPoolExecutor(16, thread_name_prefix="scan")
        self._lock = threading.Lock()
        self._pool: cf.ProcessPoolExecutor | None = None

    def _process_pool(self) -> cf.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # one str hash seed for all reader processes: their device fingerprints
                # (hashes) are compared with each other ("random" would give each its own)
                if not os.environ.get("PYTHONHASHSEED", "").isdigit():
                    os.environ["PYTHONHASHSEED"] = str(random.randrange(1, 2**32))
                self._pool = cf.ProcessPoolExecutor(
                    self.processes, multiprocessing.get_context("spawn"),
                    initializer=_init_reader_process, initargs=(self._kafka, self._topics))
            return self._pool

    def _in_processes(self, messages: int) -> bool:
        return self.processes > 0 and messages >= SMALL_SCAN

    def groups(self, messages: int, sensors: int) -> int:
        """How many parallel scans: one per reader process for a large window; for a small one,
        one per topic in thread-only mode, else one (all partitions fetched together)."""
        if self._in_processes(messages):
            return self.processes
        return 1 if self.processes else sensors

    def submit(self, job: ScanJob, messages: int) -> cf.Future[dict[str, SensorScan]]:
        if not self._in_processes(messages):
            return self._threads.submit(self._reader.scan, job)
        pool = self._process_pool()
        try:
            future = pool.submit(_scan_in_reader_process, job)
        except BrokenProcessPool:  # a reader died between requests: start fresh ones
            self.reset(pool)
            pool = self._process_pool()
            future = pool.submit(_scan_in_reader_process, job)

        def reset_if_broken(f: cf.Future[dict[str, SensorScan]]) -> None:
            if not f.cancelled() and isinstance(f.exception(), BrokenProcessPool):
                self.reset(pool)  # a reader died during this scan: the next go to fresh ones
        future.add_done_callback(reset_if_broken)
        return future

    def submit_rows(self, job: ScanJob) -> cf.Future[dict[tuple[str, int], RangeRows]]:
        return self._threads.submit(self._reader.read_rows, job)

    def reset(self, broken: cf.ProcessPoolExecutor | None = None) -> None:
        """Stop the reader processes; given the pool that broke, only if they are still it
        (not the fresh ones another request has started meanwhile)."""
        with self._lock:
            pool = self._pool
            if broken is not None and pool is not broken:
                return
            self._pool = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.reset()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def warm_up(self) -> None:
        """Connect consumers and start the reader processes now, not in the first requests.
        A request reads its window's two edges at the same time; each edge first looks up its
        start and end offsets at once (two consumers of the lookup kind), then scans (one)."""
        self._reader.warm_up(self._topics, {SHORT: 4, WINDOW: 2})
        _shared([array("q"), array("q")])  # imports numpy now, not in a request
        if self.processes:
            pool = self._process_pool()
            assert all(pool.map(_reader_ready, range(self.processes))), "reader not ready"


class WindowMetricsService:
    def __init__(self, settings: Settings, reader: KafkaWindowReader | None = None) -> None:
        self.settings = settings
        self.reader = reader or KafkaWindowReader(settings.kafka, kept_s=settings.query_cache_s)
        self.scans = ScanPool(settings, self.reader)
        self.cache = WindowCache(settings.query_cache_messages, settings.query_cache_s,
                                 settings.allowed_lateness_ms)
        # the raw parts of a window (its two edges, mostly) are read at the same time
        self._parts = cf.ThreadPoolExecutor(8, thread_name_prefix="part")
        self.rollups = RollupIndex(settings).start() if settings.query_rollups else None
        self.retention = Retention(settings)

    def close(self) -> None:
        if self.rollups is not None:
            self.rollups.close()
        self._parts.shutdown(wait=False, cancel_futures=True)
        self.scans.close()
        self.reader.close()

    def compute(self, req: MetricsRequest, received: float) -> dict[str, dict[str, object]]:
        """Result per sensor in request order; sensors that cannot be read go to req.errors.
        The deadline counts from `received` (time.time() when the request arrived). Raises
        BrokerUnavailable, ReaderLost or ScanTimeout when the window cannot be read at all."""
        s = self.settings
        deadline = received + s.query_deadline_s
        if time.time() >= deadline:
            raise ScanTimeout("the request waited past its deadline for a free thread")
        sensors = list(req.operations)
        # each sensor's window is cut by its own topic's retention, so that its answer does
        # not depend on the other sensors asked with it; a horizon before the window changes
        # nothing (None), so those sensors are planned and read together
        horizons = self.retention.horizons_ms([s.topic(sensor) for sensor in sensors])
        by_horizon: dict[int | None, list[str]] = {}
        for sensor in sensors:
            expired = horizons[s.topic(sensor)]
            by_horizon.setdefault(expired if expired is not None and expired > req.from_ms
                                  else None, []).append(sensor)
        plans = [(group, self._rollup_plan(group, req, expired))
                 for expired, group in by_horizon.items()]
        prom.WINDOWS.labels("rollups" if any(p.buckets for _, p in plans) else "raw").inc()
        totals = {sensor: plan.rolled.get(sensor) or WindowAggregate()
                  for group, plan in plans for sensor in group}
        reads = [self._parts.submit(self._read, group, lo, hi, deadline)
                 for group, plan in plans for lo, hi in plan.raw]
        missing: set[str] = set()
        try:
            for read in reads:
                aggs, unknown = self._wait(read, deadline)
                missing |= unknown
                for sensor, agg in aggs.items():
                    totals[sensor].merge(agg)
        finally:  # one part failed: the others not started yet would only hold threads
            for read in reads:
                read.cancel()
        result: dict[str, dict[str, object]] = {}
        for sensor in sensors:
            total = totals[sensor]
            if sensor in missing:
                req.errors.append(f"No topic for the sensor {sensor} on the broker")
                continue
            _count(sensor, total)
            result[sensor] = self._metrics(sensor, total, req)
        return result

    def _rollup_plan(self, sensors: list[str], req: MetricsRequest, expired: int | None
                     ) -> RollupPlan:
        """The window's plan for sensors of one retention horizon (`expired`); its notes are
        added to the answer's."""
        plan = (self.rollups.plan(sensors, req.from_ms, req.to_ms, expired)
                if self.rollups is not None else RollupPlan([(req.from_ms, req.to_ms)]))
        req.errors += plan.notes
        # one note for the raw parts before the horizon (unreadable rollups can make many)
        if expired is not None and (early := [(lo, hi) for lo, hi in plan.raw if lo < expired]):
            span = f"{format_ms(early[0][0])} to {format_ms(min(early[-1][1], expired - 1))}"
            req.errors.append(retention_note(sensors, expired, (
                f"{span} was" if len(early) == 1 else f"{len(early)} parts from {span} were")
                + " answered from the readings left, without rollups of that time"))
        return plan

    def _read(self, sensors: list[str], lo: int, hi: int, deadline: float
              ) -> tuple[dict[str, WindowAggregate], set[str]]:
        """The readings of the window [lo, hi] per sensor, and the sensors without a topic."""
        if time.time() >= deadline:  # it waited that long for a thread
            raise ScanTimeout("a part of the window waited past the deadline for a thread")
        s = self.settings
        cache = self.cache if self.cache.max_messages > 0 else None
        topics = {s.topic(sensor): sensor for sensor in sensors}
        plans = self.reader.plan(topics, lo, hi, s.allowed_lateness_ms, cache)
        ranges = [r for plan in plans.values() for r in plan]
        totals = {sensor: WindowAggregate() for sensor in plans}
        messages = sum(r.end - r.start for r in ranges)
        job = ScanJob((), lo, hi, deadline, s.allowed_lateness_ms)  # without its ranges
        if cache is not None and messages < SMALL_SCAN and cache.admits(ranges):
            self._fold_cached(cache, ranges, job, totals)
        else:
            self._fold_scanned(ranges, messages, job, totals)
        return totals, set(sensors) - totals.keys()

    def _fold_scanned(self, ranges: list[PartitionRange], messages: int,
                      job: ScanJob, totals: dict[str, WindowAggregate]) -> None:
        """Aggregate the ranges in parallel scans of whole partitions, each counting a
        (device, seq) once (a large one per partition); a device found by two scans or
        partitions may have had a reading counted twice, so its sensor is read again in one."""
        groups = split(ranges, self.scans.groups(messages, len(totals)))
        per_partition = messages >= PER_PARTITION_SCAN
        futures = [self.scans.submit(replace(job, ranges=group, per_partition=per_partition),
                                     messages) for group in groups]
        fingerprints: dict[str, list[array[int]]] = {sensor: [] for sensor in totals}
        for future in futures:
            for sensor, scan in self._wait(future, job.deadline).items():
                totals[sensor].merge(scan.agg)
                fingerprints[sensor] += scan.fingerprints
        rereads: dict[str, cf.Future[dict[str, SensorScan]]] = {}
        for sensor in [s for s, parts in fingerprints.items() if _shared(parts)]:
            log.info("a device of %s was read from two partitions: reading it again in one "
                     "scan", sensor)
            mine = tuple(r for r in ranges if r.sensor == sensor)
            rereads[sensor] = self.scans.submit(replace(job, ranges=mine),
                                                sum(r.end - r.start for r in mine))
        for sensor, future in rereads.items():
            totals[sensor] = self._wait(future, job.deadline)[sensor].agg

    def _fold_cached(self, cache: WindowCache, ranges: list[PartitionRange],
                     job: ScanJob, totals: dict[str, WindowAggregate]) -> None:
        """Aggregate the ranges from memory; parts not held yet are read from the broker, kept."""
        reads = [(r, cache.read(r.topic, r.partition, r.start, r.end, r.end_stamp))
                 for r in ranges]
        gaps = [(PartitionRange(r.topic, r.sensor, r.partition, *read.gap, r.end_stamp), read)
                for r, read in reads if read.gap is not None]
        messages = sum(g.end - g.start for g, _ in gaps)
        groups = split([g for g, _ in gaps], self.scans.groups(messages, len(totals)))
        futures = [self.scans.submit_rows(replace(job, ranges=group)) for group in groups]
        rows = {tp: got for f in futures for tp, got in self._wait(f, job.deadline).items()}
        for g, read in gaps:
            read.fill(cache, g.topic, g.partition, rows[(g.topic, g.partition)], job.from_ms)
        for sensor, total in totals.items():
            seen = SeenReadings()  # one per sensor: a repeat in another partition counts once
            for r, read in reads:
                if r.sensor == sensor:
                    read.fold(total, seen, job.from_ms, job.to_ms)

    def _wait(self, future: cf.Future[T], deadline: float) -> T:
        try:
            return future.result(timeout=max(0.0, deadline - time.time()) + 1)
        except cf.TimeoutError:
            future.cancel()
            raise ScanTimeout("partition scan did not finish before the deadline") from None
        except (BrokenProcessPool, cf.CancelledError):  # (the pool was reset as it broke;
            # cancelled: the service is stopping)
            raise ReaderLost("a reader process stopped during the scan; new ones are started") \
                from None
        except UnknownTopic as e:  # deleted while being read
            raise BrokerUnavailable(f"topic vanished during the scan: {e}") from None

    @staticmethod
    def _metrics(sensor: str, total: WindowAggregate,
                 req: MetricsRequest) -> dict[str, object]:
        out: dict[str, object] = {}
        for metric in req.operations[sensor]:
            value = total.metric(metric)
            if isinstance(value, float) and not math.isfinite(value):
                req.errors.append(f"Metric {metric} of the sensor {sensor} overflowed")
                value = None
            out[metric] = value
        return out


def _shared(parts: list[array[int]]) -> bool:
    """Whether two parts' (each distinct) device fingerprints meet (a hash collision only
    costs a needless re-read), sorted together in numpy: a set of millions of Python ints is
    far slower. Imported here, so that the reader processes do not load it."""
    if len(parts) < 2:
        return False
    import numpy as np

    together = np.sort(np.concatenate([np.frombuffer(part, np.int64) for part in parts]))
    return bool((together[1:] == together[:-1]).any())


def _count(sensor: str, total: WindowAggregate) -> None:
    prom.MESSAGES_SCANNED.labels(sensor).inc(total.scanned)
    if total.malformed:
        prom.MALFORMED.labels(sensor).inc(total.malformed)
        log.warning("skipped %d malformed messages in %s: %s", total.malformed, sensor,
                    total.malformed_reasons)
    if total.duplicates:
        prom.DUPLICATES.labels(sensor).inc(total.duplicates)
    if total.late:
        prom.LATE.labels(sensor).inc(total.late)
