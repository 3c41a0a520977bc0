"""Answers a MetricsRequest: every sensor topic and every partition is read in parallel.

Offset lookups (a few broker round trips per topic) run in threads. Partition scans are
CPU-bound (decoding JSON), so with `IOTPIPE_QUERY_READERS > 0` they run in a small pool of
reader processes, each keeping its own reused consumer; with 0 they run in threads.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import multiprocessing
import threading
import time
from concurrent.futures.process import BrokenProcessPool

from iotpipe.core.settings import KafkaSettings, Settings
from iotpipe.query import metrics as prom
from iotpipe.query.aggregate import WindowAggregate
from iotpipe.query.reader import (
    BrokerUnavailable,
    KafkaWindowReader,
    PartitionScan,
    ScanTimeout,
    UnknownTopic,
)
from iotpipe.query.request import MetricsRequest

log = logging.getLogger(__name__)

_process_reader: KafkaWindowReader | None = None


def _init_reader_process(kafka: KafkaSettings) -> None:
    global _process_reader
    _process_reader = KafkaWindowReader(kafka)


def _scan_in_reader_process(job: PartitionScan) -> WindowAggregate:
    assert _process_reader is not None, "reader process not initialised"
    return _process_reader.scan(job)


class ScanPool:
    """Runs partition scans in reader processes (or threads); rebuilt if a process dies."""

    def __init__(self, settings: Settings, reader: KafkaWindowReader) -> None:
        self._kafka = settings.kafka
        self._processes = settings.query_readers
        self._reader = reader
        self._lock = threading.Lock()
        self._pool: cf.Executor | None = None

    def _executor(self) -> cf.Executor:
        with self._lock:
            if self._pool is None:
                if self._processes > 0:
                    self._pool = cf.ProcessPoolExecutor(
                        self._processes, multiprocessing.get_context("spawn"),
                        initializer=_init_reader_process, initargs=(self._kafka,))
                else:
                    self._pool = cf.ThreadPoolExecutor(16, thread_name_prefix="scan")
            return self._pool

    def submit(self, job: PartitionScan) -> cf.Future[WindowAggregate]:
        pool = self._executor()
        if isinstance(pool, cf.ProcessPoolExecutor):
            return pool.submit(_scan_in_reader_process, job)
        return pool.submit(self._reader.scan, job)

    def reset(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def warm_up(self) -> None:
        """Start the reader processes now, not on the first request."""
        pool = self._executor()
        if isinstance(pool, cf.ProcessPoolExecutor):
            list(pool.map(_init_reader_process, [self._kafka] * self._processes))


class WindowMetricsService:
    def __init__(self, settings: Settings, reader: KafkaWindowReader | None = None) -> None:
        self.settings = settings
        self.reader = reader or KafkaWindowReader(settings.kafka)
        self.scans = ScanPool(settings, self.reader)
        self._lookups = cf.ThreadPoolExecutor(8, thread_name_prefix="lookup")

    def close(self) -> None:
        self.scans.reset()
        self._lookups.shutdown(wait=False, cancel_futures=True)
        self.reader.close()

    def compute(self, req: MetricsRequest) -> dict[str, dict[str, object]]:
        """Result per sensor in request order; sensors that cannot be read go to req.errors.

        Raises BrokerUnavailable or ScanTimeout when the window cannot be read at all.
        """
        s = self.settings
        deadline = time.time() + s.query_deadline_s
        plans = {sensor: self._lookups.submit(
                     self.reader.plan, s.topic(sensor), sensor, req.from_ms, req.to_ms,
                     s.allowed_lateness_ms, deadline)
                 for sensor in req.operations}
        scans: dict[str, list[cf.Future[WindowAggregate]]] = {}
        for sensor, plan in plans.items():
            try:
                jobs = plan.result(timeout=max(0.0, deadline - time.time()) + 1)
            except UnknownTopic:
                req.errors.append(f"No topic for the sensor {sensor} on the broker")
                continue
            except cf.TimeoutError:
                raise BrokerUnavailable("offset lookup did not finish") from None
            scans[sensor] = [self.scans.submit(job) for job in jobs]
        result: dict[str, dict[str, object]] = {}
        for sensor, futures in scans.items():
            total = WindowAggregate()
            for future in futures:
                total.merge(self._wait(future, deadline))
            _count(sensor, total)
            result[sensor] = self._metrics(sensor, total, req)
        return result

    def _wait(self, future: cf.Future[WindowAggregate], deadline: float) -> WindowAggregate:
        try:
            return future.result(timeout=max(0.0, deadline - time.time()) + 1)
        except cf.TimeoutError:
            future.cancel()
            raise ScanTimeout("partition scan did not finish before the deadline") from None
        except BrokenProcessPool:
            self.scans.reset()
            raise BrokerUnavailable("a reader process died; restarted") from None

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


def _count(sensor: str, total: WindowAggregate) -> None:
    prom.MESSAGES_SCANNED.labels(sensor).inc(total.scanned)
    if total.malformed:
        prom.MALFORMED.labels(sensor).inc(total.malformed)
        log.warning("skipped %d malformed messages in %s: %s", total.malformed, sensor,
                    total.malformed_reasons)
    if total.duplicates:
        prom.DUPLICATES.labels(sensor).inc(total.duplicates)
