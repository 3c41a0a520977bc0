"""Query-service benchmark on data shaped like real fleets: (a) the service over HTTP, (b) the
prototype as it ran (kafka-python, see baseline.py), (c) the raw consume rate of the same
messages; latency, peak RSS, and every answer checked against the generated readings."""

from __future__ import annotations

import functools
import gc
import json
import random
import subprocess
import sys
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, Producer

from iotpipe.bench.measure import PeakRss, messages_in, percentile, topic_partitions
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
MINUTE_MS = 60_000
Log = Callable[[str], None]


@dataclass
class Dataset:
    """Readings of one shape, loaded under their own topic prefix; `ts`/`values` (per sensor,
    sorted by ts) are kept for small sets, to compute the expected answer of any window."""

    name: str
    size: int  # readings per sensor
    devices: int
    rotation: bool
    prefix: str = ""
    last_ts: int = 0
    ts: dict[str, array[int]] = field(default_factory=dict)
    values: dict[str, array[int]] = field(default_factory=dict)

    def readings(self, sensor: str) -> Iterator[wire.Reading]:
        """rotation: devices take turns in a fixed order, 10 ms apart. Otherwise a
        fleet of devices sending independently: each once per period (100 readings/s per
        sensor in all) from its own phase, with +-50 ms jitter, in the order of their stamps."""
        if self.rotation:
            for i in range(self.size):
                yield wire.Reading(f"{sensor}-{i % self.devices}", sensor, i // self.devices,
                                   T0 + i * 10, (i * 7) % 101)
            return
        rng = random.Random(f"{self.name}-{sensor}")
        period, rounds = self.devices * 10, self.size // self.devices
        phases = [rng.randrange(period) for _ in range(self.devices)]
        stamped = sorted((T0 + k * period + phases[d] + rng.randrange(-50, 51), d, k)
                         for k in range(rounds) for d in range(self.devices))
        for ts, d, k in stamped:
            yield wire.Reading(f"{sensor}-{d}", sensor, k, max(T0, ts), rng.randrange(101))

    def inside(self, sensor: str, from_ms: int, to_ms: int) -> array[int]:
        ts = self.ts[sensor]
        return self.values[sensor][bisect_left(ts, from_ms):bisect_right(ts, to_ms)]

    def expected(self, sensor: str, from_ms: int, to_ms: int) -> dict[str, object]:
        inside = self.inside(sensor, from_ms, to_ms)
        if not inside:
            return {"count": 0, "min": None, "max": None, "average": None}
        total, n = sum(inside), len(inside)
        return {"count": n, "min": min(inside), "max": max(inside),
                "average": total // n if total % n == 0 else total / n}


def load(settings: Settings, data: Dataset, keep: bool) -> None:
    ensure_topics(settings)
    # idempotent: a retried batch keeps its place, so each partition stays in stamp order
    p = Producer(settings.kafka.client_config() | {"enable.idempotence": True,
                                                   "linger.ms": 50, "batch.size": 1_000_000,
                                                   "compression.type": "lz4",
                                                   "queue.buffering.max.messages": 2_000_000})
    for sensor in SENSORS:
        topic, pairs = settings.topic(sensor), []
        for r in data.readings(sensor):
            while True:
                try:
                    p.produce(topic, wire.encode(r), wire.key(r), timestamp=r.ts)
                    break
                except BufferError:
                    p.poll(0.1)
            data.last_ts = max(data.last_ts, r.ts)
            if keep:
                pairs.append((r.ts, r.value))
        if keep:
            pairs.sort()
            data.ts[sensor] = array("q", [t for t, _ in pairs])
            data.values[sensor] = array("q", [int(v) for _, v in pairs])
    assert p.flush(300) == 0


def raw_consume_rate(settings: Settings) -> float:
    """Messages/s of one consumer reading every message of the topics, decoding nothing;
    tuned for throughput (large fetches) and collecting garbage as seldom as the readers."""
    c = Consumer(settings.kafka.client_config() | {
        "group.id": "iotpipe-bench-raw", "enable.auto.commit": False,
        "fetch.max.bytes": 50 * 2**20, "max.partition.fetch.bytes": 10 * 2**20,
        "queued.min.messages": 1_000_000, "queued.max.messages.kbytes": 256 * 1024})
    tps = topic_partitions(c, map(settings.topic, SENSORS), 0)
    total = messages_in(c, tps)
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


def baseline(settings: Settings, windows: list[tuple[int, int]]) -> dict:
    """(b) in its own process: latencies, results and its peak RSS."""
    topics = json.dumps({s: settings.topic(s) for s in SENSORS})
    done = subprocess.run([sys.executable, "-m", "iotpipe.bench.baseline",
                           settings.kafka.bootstrap, topics, json.dumps(windows)],
                          capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode:
        raise RuntimeError(f"baseline failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


@dataclass
class Row:
    data: str
    window: str
    messages: int  # in the window, all sensors
    service: list[float]
    service_rss: float
    base: list[float] = field(default_factory=list)
    base_rss: float = 0.0
    raw: list[float] = field(default_factory=list)

    def cells(self) -> str:
        a50 = percentile(self.service, 50)
        rate = self.messages / a50
        b = (f"{percentile(self.base, 50) * 1e3:.1f} | {self.base_rss:.0f} | "
             f"{percentile(self.base, 50) / a50:.1f}x" if self.base else "- | - | -")
        c = (f"{percentile(self.raw, 50):,.0f} | {rate / percentile(self.raw, 50):.0%}"
             if self.raw else "- | -")
        return (f"| {self.data} | {self.window} | {self.messages:,} | {a50 * 1e3:.1f} / "
                f"{percentile(self.service, 99) * 1e3:.1f} | {self.service_rss:.0f} | {b} | "
                f"{rate:,.0f} | {c} |")


class Service:
    """(a): gunicorn with 1 worker and 2 reader processes, window cache off (every request
    reads the topics: a cold window each time)."""

    def __init__(self, bootstrap: str, prefix: str, workdir: Path) -> None:
        port = free_port()
        self.proc = start_service("query", workdir / f"query-{prefix}log", {
            "IOTPIPE_KAFKA_BOOTSTRAP": bootstrap, "IOTPIPE_TOPIC_PREFIX": prefix,
            "IOTPIPE_QUERY_PORT": str(port), "IOTPIPE_QUERY_METRICS_PORT": str(free_port()),
            "IOTPIPE_QUERY_WORKERS": "1",
            "IOTPIPE_QUERY_DEADLINE_SECONDS": "300", "IOTPIPE_LOG_LEVEL": "WARNING",
            "IOTPIPE_MAX_WINDOW_SECONDS": str(400 * 86400), "IOTPIPE_QUERY_CACHE_MESSAGES": "0"})
        self.url = f"http://127.0.0.1:{port}/compute/metrics"
        wait_healthy(f"http://127.0.0.1:{port}/health", 60, self.proc)

    def ask(self, from_ms: int, to_ms: int) -> tuple[float, dict]:
        body = {s: METRICS for s in SENSORS} | {"from": format_ms(from_ms), "to": format_ms(to_ms)}
        t = time.perf_counter()
        status, got = http_post_json(self.url, body, 300)
        took = time.perf_counter() - t
        assert status == 200 and got["errors"] == [], got
        return took, got["result"]

    def runs(self, windows: list[tuple[int, int]], check: Callable[[int, int, dict], None],
             raw: Callable[[], float] | None = None) -> tuple[list[float], float, list[float]]:
        """Latencies and peak RSS over `windows` (after one warm-up); `raw` runs between them
        (5 times), so both see the machine in the same moods."""
        check(*windows[0], self.ask(*windows[0])[1])
        latencies, raw_rates = [], []
        with PeakRss(self.proc.pid) as rss:
            for i, (lo, hi) in enumerate(windows):
                if raw is not None and i % max(1, len(windows) // 5) == 0:
                    raw_rates.append(raw())
                took, result = self.ask(lo, hi)
                check(lo, hi, result)
                latencies.append(took)
        return latencies, rss.peak, raw_rates

    def close(self) -> None:
        stop_process(self.proc)


def _minutes(data: Dataset, n: int) -> list[tuple[int, int]]:
    """`n` one-minute windows at random seconds of the loaded span (a new one each time)."""
    rng = random.Random(n)
    starts = rng.sample(range(T0, data.last_ts - MINUTE_MS, 1000), n)
    return [(s, s + MINUTE_MS - 1) for s in starts]


def _checker(data: Dataset) -> Callable[[int, int, dict], None]:
    def check(lo: int, hi: int, result: dict) -> None:
        for sensor in SENSORS:
            want = data.expected(sensor, lo, hi)
            got = result[sensor]
            assert got["count"] == want["count"] and got["min"] == want["min"], (got, want)
            assert got["max"] == want["max"] and got["average"] == want["average"], (got, want)
    return check


def _settings(bootstrap: str, prefix: str) -> Settings:
    return Settings.from_env({"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap, "IOTPIPE_TOPIC_PREFIX": prefix,
                              "IOTPIPE_TOPIC_RETENTION_MS": "-1"})  # old timestamps


def order_rows(bootstrap: str, workdir: Path, log: Log) -> list[Row]:
    """Both data orders at 10^5 readings/sensor: the whole window, and 1-minute windows."""
    rows = []
    for data in (Dataset("rotation", 100_000, 10, True), Dataset("fleet", 100_000, 100, False)):
        data.prefix = f"bq-{data.name}-"
        settings = _settings(bootstrap, data.prefix)
        t = time.perf_counter()
        load(settings, data, keep=True)
        log(f"{data.name}: loaded {3 * data.size:,} readings in {time.perf_counter() - t:.1f}s")
        service = Service(bootstrap, data.prefix, workdir)
        check, whole = _checker(data), (T0, data.last_ts)
        try:
            lat, rss, raw = service.runs([whole] * 20, check,
                                         functools.partial(raw_consume_rate, settings))
            base = baseline(settings, [whole] * 3)
            rows.append(Row(data.name, "whole (10^5/sensor)", 3 * data.size, lat, rss,
                            base["latencies"], base["peak_rss_mib"], raw))
            minutes = _minutes(data, 40)
            lat, rss, _ = service.runs(minutes, check)
            base = baseline(settings, minutes[:10])
            messages = sum(len(data.inside(s, *minutes[0])) for s in SENSORS)
            rows.append(Row(data.name, "1 minute, cold", messages, lat, rss,
                            base["latencies"], base["peak_rss_mib"]))
        finally:
            service.close()
        log(rows[-2].cells())
        log(rows[-1].cells())
    return rows


def fleet_size_rows(bootstrap: str, workdir: Path, log: Log) -> list[Row]:
    """The same 10^6 readings per sensor from 1,000 devices and from 10^6 devices of one
    reading each: time and memory must stay nearly flat in the number of devices."""
    rows = []
    for devices in (1000, 1_000_000):
        data = Dataset(f"{devices:,} devices", 1_000_000, devices, False,
                       prefix=f"bq-d{devices}-")
        settings = _settings(bootstrap, data.prefix)
        t = time.perf_counter()
        load(settings, data, keep=False)
        log(f"{data.name}: loaded {3 * data.size:,} readings in {time.perf_counter() - t:.1f}s")
        service = Service(bootstrap, data.prefix, workdir)

        def check(lo: int, hi: int, result: dict, n: int = data.size) -> None:
            assert all(result[s]["count"] == n for s in SENSORS), result

        try:
            lat, rss, raw = service.runs([(T0, data.last_ts)] * 3, check,
                                         functools.partial(raw_consume_rate, settings))
        finally:
            service.close()
        rows.append(Row(data.name, "whole (10^6/sensor)", 3 * data.size, lat, rss, raw=raw))
        log(rows[-1].cells())
    return rows


def lines_of_code() -> int:
    """Non-blank lines of the query package and the wire module."""
    root = Path(__file__).resolve().parents[1]
    files = [*(root / "query").glob("*.py"), root / "core" / "wire.py"]
    return sum(1 for f in files for line in f.read_text().splitlines() if line.strip())


def run(bootstrap: str, workdir: Path, log: Log) -> str:
    rows = order_rows(bootstrap, workdir, log)
    sizes = fleet_size_rows(bootstrap, workdir, log)
    few, many = sizes
    ratio = percentile(many.service, 50) / percentile(few.service, 50)
    header = ("| data | window | messages | (a) service p50 / p99 ms | (a) peak RSS MiB | "
              "(b) prototype p50 ms | (b) peak RSS MiB | a vs b | (a) msg/s at p50 | "
              "(c) raw consume msg/s p50 | a / c |\n"
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    return (
        "## Query service: 3 sensors x 4 metrics, data shaped like fleets\n\n"
        "Data: *rotation* = 10 devices per sensor taking turns in a fixed order, 10 ms apart; "
        "*fleet* = 100 devices per sensor each sending once a second from its own "
        "phase with +-50 ms jitter, so the devices come in a random order; *N devices* = the "
        "same fleet shape, 10^6 readings per sensor from N devices. (a) this service over HTTP "
        "(gunicorn, 1 worker, 2 reader processes, window cache off: every request reads the "
        "topics, so every window is cold); 1-minute windows start at a random second, a new "
        "one per request. (b) the prototype as it ran: kafka-python, one consumer per sensor, "
        "its iterator, `json.loads` per message, the values in a list. (c) one consumer "
        "reading the same messages without decoding them, tuned for throughput, run 5 times "
        "between (a)'s requests; a / c compares medians. Every answer of (a) is checked "
        "against the generated readings. RSS of (a) is the whole process tree.\n\n"
        + header + "\n".join(r.cells() for r in rows + sizes) + "\n\n"
        f"10^6 devices vs 1,000 devices (same readings): {ratio:.2f}x the time, peak RSS "
        f"{many.service_rss:.0f} vs {few.service_rss:.0f} MiB.\n\n"
        f"Lines of `services/iotpipe/query` + `core/wire.py` (non-blank): {lines_of_code():,} "
        "(1,667 before the compiled decoder).\n\n"
        "Targets: at 10^5 readings/sensor and for 1-minute windows, in both data orders, a vs b "
        ">= 5x and a / c >= 70 % (10^5); 1-minute cold p50 <= 60 ms; 10^6 devices <= 2x the "
        "time of 1,000 devices and peak RSS <= 600 MiB.")
