"""Query-service benchmark: (a) the service over HTTP, (b) the prototype's algorithm,
(c) the raw consume rate of the same messages; per size, latency and peak RSS."""

from __future__ import annotations

import functools
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from iotpipe.bench.measure import PeakRss, percentile
from iotpipe.core import wire
from iotpipe.core.settings import Settings
from iotpipe.localstack.kafka_broker import free_port
from iotpipe.localstack.processes import http_post_json, start_service, stop_process, wait_healthy
from iotpipe.localstack.topics import ensure_topics
from iotpipe.query.service import READER_GC_THRESHOLDS
from iotpipe.query.timestamps import format_ms

T0 = 1_700_000_000_000
SENSORS = ("temperature", "humidity", "pressure")
METRICS = ["count", "min", "max", "average"]
DEVICES = 10


@dataclass
class SizeResult:
    size: int
    service_p50: float
    service_p99: float
    service_rss: float
    baseline_p50: float
    baseline_p99: float
    baseline_rss: float
    raw_rates: list[float]  # runs interleaved with the service's requests

    @property
    def raw_rate(self) -> float:
        return percentile(self.raw_rates, 50)

    @property
    def messages(self) -> int:
        return self.size * len(SENSORS)

    @property
    def speedup(self) -> float:
        return self.baseline_p50 / self.service_p50

    @property
    def of_raw(self) -> float:
        """Median against median: this machine's speed varies by tens of percent from one
        second to the next, so runs are interleaved and compared at the same percentile."""
        return (self.messages / self.service_p50) / self.raw_rate

    @property
    def of_best_raw(self) -> float:
        return (self.messages / self.service_p50) / max(self.raw_rates)


def load(settings: Settings, size: int) -> int:
    """`size` readings per sensor, 10 ms apart over DEVICES devices; returns the last ts."""
    ensure_topics(settings)
    p = Producer(settings.kafka.client_config() | {"linger.ms": 50, "batch.size": 1_000_000,
                                                   "compression.type": "lz4",
                                                   "queue.buffering.max.messages": 2_000_000})
    for sensor in SENSORS:
        topic = settings.topic(sensor)
        for i in range(size):
            r = wire.Reading(f"{sensor}-{i % DEVICES}", sensor, i // DEVICES, T0 + i * 10, i % 101)
            while True:
                try:
                    p.produce(topic, wire.encode(r), wire.key(r), timestamp=r.ts)
                    break
                except BufferError:
                    p.poll(0.1)
    assert p.flush(120) == 0
    return T0 + (size - 1) * 10


def raw_consume_rate(settings: Settings) -> float:
    """Messages/s of one consumer reading every message of the topics, decoding nothing;
    tuned for throughput (large fetches) and collecting garbage as seldom as the readers."""
    c = Consumer(settings.kafka.client_config() | {  # tuned for throughput: it is the limit
        "group.id": "iotpipe-bench-raw", "enable.auto.commit": False,
        "fetch.max.bytes": 50 * 2**20, "max.partition.fetch.bytes": 10 * 2**20,
        "queued.min.messages": 1_000_000, "queued.max.messages.kbytes": 256 * 1024})
    tps = []
    for sensor in SENSORS:
        topic = settings.topic(sensor)
        for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
            tps.append(TopicPartition(topic, p, 0))
    total = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
    thresholds = gc.get_threshold()
    gc.set_threshold(*READER_GC_THRESHOLDS)
    t = time.perf_counter()
    c.assign(tps)
    n = 0
    try:
        while n < total:
            batch = c.consume(min(10_000, total - n), 10)
            if not batch:
                raise TimeoutError("raw consumer got nothing for 10 s")
            for m in batch:
                m.value()
            n += len(batch)
        rate = n / (time.perf_counter() - t)
    finally:
        gc.set_threshold(*thresholds)
    c.close()
    return rate


def _service_runs(url: str, pid: int, body: dict, repeats: int, expected: dict,
                  raw: Callable[[], float]) -> tuple[list[float], float, list[float]]:
    """Latencies of `repeats` requests and the peak RSS of the service's process tree; the raw
    consumer runs between them (5 times), so both see the machine in the same moods."""
    status, got = http_post_json(url, body, 120)  # warm-up; also checks the answer
    assert status == 200 and got["result"] == expected, got
    latencies, raw_rates = [], []
    with PeakRss(pid) as rss:
        for i in range(repeats):
            if i % max(1, repeats // 5) == 0:
                raw_rates.append(raw())
            t = time.perf_counter()
            status, _ = http_post_json(url, body, 120)
            latencies.append(time.perf_counter() - t)
            assert status == 200
    return latencies, rss.peak, raw_rates


def _baseline_runs(settings: Settings, last_ts: int, repeats: int) -> dict:
    topics = json.dumps({s: settings.topic(s) for s in SENSORS})
    done = subprocess.run([sys.executable, "-m", "iotpipe.bench.baseline",
                           settings.kafka.bootstrap, topics, str(T0), str(last_ts),
                           str(repeats)], capture_output=True, text=True, timeout=1800,
                          check=True)
    return json.loads(done.stdout)


def run(bootstrap: str, sizes: list[int], workdir: Path, log) -> list[SizeResult]:
    port = free_port()
    env = {"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap, "IOTPIPE_QUERY_PORT": str(port),
           "IOTPIPE_QUERY_WORKERS": "1", "IOTPIPE_QUERY_DEADLINE_SECONDS": "300",
           "IOTPIPE_MAX_WINDOW_SECONDS": str(10 * 86400), "IOTPIPE_LOG_LEVEL": "WARNING",
           # every request reads the topics (the window cache's effect is the load section's)
           "IOTPIPE_QUERY_CACHE_MESSAGES": "0"}
    results = []
    for size in sizes:
        prefix = f"bench{size}-"
        settings = Settings.from_env({"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap,
                                      "IOTPIPE_TOPIC_PREFIX": prefix,
                                      "IOTPIPE_TOPIC_RETENTION_MS": "-1"})  # old timestamps
        t = time.perf_counter()
        last_ts = load(settings, size)
        log(f"size {size}: loaded {size * 3} readings in {time.perf_counter() - t:.1f}s")
        base = _baseline_runs(settings, last_ts, 5 if size <= 10_000 else 3 if size <= 10**5
                              else 1)
        expected = {s: {m: base["result"][s][m] for m in METRICS} for s in SENSORS}
        proc = start_service("query", workdir / f"query-{size}.log",
                             env | {"IOTPIPE_TOPIC_PREFIX": prefix})
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(f"{url}/health", 60, proc)
            body = {s: METRICS for s in SENSORS} | {"from": format_ms(T0),
                                                    "to": format_ms(last_ts)}
            lat, rss, raw = _service_runs(f"{url}/compute/metrics", proc.pid, body,
                                          20 if size <= 10**5 else 5, expected,
                                          functools.partial(raw_consume_rate, settings))
        finally:
            stop_process(proc)
        results.append(SizeResult(size, percentile(lat, 50), percentile(lat, 99), rss,
                                  percentile(base["latencies"], 50),
                                  percentile(base["latencies"], 99), base["peak_rss_mib"],
                                  raw))
        log(f"size {size}: service p50 {results[-1].service_p50 * 1000:.1f} ms, baseline "
            f"p50 {results[-1].baseline_p50 * 1000:.1f} ms, raw {results[-1].raw_rate:,.0f}/s")
    return results
