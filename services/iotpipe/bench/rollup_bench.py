"""Rollups: eight days of a fleet, rolled up by the real stream job, then windows of 1 minute to
7 days asked of the real gunicorn service with rollups on and off (same windows, answers
compared), and 64 concurrent clients asking random windows with the window cache on and off."""

from __future__ import annotations

import json
import math
import random
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

from confluent_kafka import Producer

from iotpipe.bench.load_bench import LUA_HEAD, errors_cell, fleet_second, wrk
from iotpipe.bench.measure import machine_busy_s, percentile, tree_cpu_s, tree_rss_mib
from iotpipe.bench.stream_backlog import run_pipeline
from iotpipe.core import wire
from iotpipe.core.settings import Settings
from iotpipe.localstack.kafka_broker import free_port
from iotpipe.localstack.processes import http_post_json, start_service, stop_process, wait_healthy
from iotpipe.localstack.topics import ensure_topics
from iotpipe.query.timestamps import format_ms

PREFIX, DEVICES, DAYS = "roll-", 3, 8
WRK_S = 60
ROLLUPS_BEHIND_S = 300  # the last buckets wait for the lateness and the watermark
DAY_MS = 86_400_000
# window -> (length ms, requests with rollups on, requests without: reading is slow)
WINDOWS = {"1 minute": (60_000, 40, 40), "1 hour": (3_600_000, 40, 20),
           "1 day": (DAY_MS, 40, 5), "7 days": (7 * DAY_MS, 40, 3)}
METRICS = ["count", "min", "max", "average", "sum", "stddev"]
LUA = LUA_HEAD + """local first, last, longest, body = %d, %d, %d, [[%s]]
function request()
  local span = math.random(60, longest)
  local from = math.random(first, last - span)
  return wrk.format(nil, nil, nil, string.format(body, stamp(from), stamp(from + span)))
end
"""


def load_fleet(settings: Settings, end_ms: int) -> int:
    """DAYS days of DEVICES devices per sensor at 1 reading/s each, ending at `end_ms`, sent as
    a fleet does (see fleet_second)."""
    ensure_topics(settings)
    p = Producer(settings.kafka.client_config() | {
        "enable.idempotence": True, "linger.ms": 20, "compression.type": "lz4",
        "batch.num.messages": 500, "queue.buffering.max.messages": 1_000_000})
    rng = random.Random(21)
    start_s = (end_ms - DAYS * DAY_MS) // 1000
    n = 0
    for sensor in settings.sensors:
        topic = settings.topic(sensor)
        for s in range(start_s, end_ms // 1000):
            for d, ts in fleet_second(rng, DEVICES, s * 1000):
                r = wire.Reading(f"{sensor}-{d}", sensor, s - start_s, ts,
                                 round(20 + 10 * math.sin(s / 13_751) + rng.gauss(0, 1), 3))
                p.produce(topic, wire.encode(r), wire.key(r), timestamp=ts)
            n += DEVICES
            if len(p) > 200_000:
                p.poll(0.05)
    assert p.flush(300) == 0
    return n


def _serve(bootstrap: str, workdir: Path, name: str, **env: str) -> tuple[Popen[bytes], str, str]:
    port, metrics = free_port(), free_port()
    proc = start_service("query", workdir / f"query-{name}.log", {
        "IOTPIPE_KAFKA_BOOTSTRAP": bootstrap, "IOTPIPE_TOPIC_PREFIX": PREFIX,
        "IOTPIPE_QUERY_PORT": str(port), "IOTPIPE_QUERY_METRICS_PORT": str(metrics),
        "IOTPIPE_QUERY_DEADLINE_SECONDS": "120", "IOTPIPE_LOG_LEVEL": "WARNING"} | env)
    wait_healthy(f"http://127.0.0.1:{port}/health", 60, proc)
    return proc, f"http://127.0.0.1:{port}/compute/metrics", f"http://127.0.0.1:{metrics}/metrics"


def _wait_rollups(metrics_url: str, end_ms: int) -> None:
    """Until every worker's index holds the rollups: its lag gauge (seconds behind the clock)
    is within a few buckets of the newest reading's age."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
        m = re.search(r"^iotpipe_query_rollup_lag_seconds (\S+)$", text, re.M)
        if m and float(m[1]) < time.time() - end_ms / 1000 + ROLLUPS_BEHIND_S:
            return
        time.sleep(1)
    raise RuntimeError("the query service did not read the rollups within 5 minutes")


def _ask(url: str, sensors: tuple[str, ...], lo: int, hi: int) -> tuple[float, dict]:
    body = {s: METRICS for s in sensors} | {"from": format_ms(lo), "to": format_ms(hi)}
    t0 = time.perf_counter()
    status, answer = http_post_json(url, body, timeout_s=150)
    took = (time.perf_counter() - t0) * 1000
    if status != 200 or answer.get("errors"):
        raise RuntimeError(f"{status} {answer} for {body}")
    return took, answer["result"]


def _equal(a: dict, b: dict) -> bool:
    for sensor, metrics in a.items():
        for k, v in metrics.items():
            w = b[sensor][k]
            if (v is None) != (w is None) or (v is not None and not math.isclose(
                    v, w, rel_tol=1e-9, abs_tol=1e-9)):
                return False
    return True


def run(bootstrap: str, workdir: Path, log: Callable[[str], None]) -> str:
    settings = Settings.from_env({"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap,
                                  "IOTPIPE_TOPIC_PREFIX": PREFIX,
                                  "IOTPIPE_TOPIC_RETENTION_MS": "-1"})  # stamps of days ago
    end_ms = int(time.time()) // 60 * 60_000
    t0 = time.monotonic()
    readings = load_fleet(settings, end_ms)
    log(f"rollups: {readings:,} readings loaded in {time.monotonic() - t0:.0f} s")
    stream = run_pipeline("ours", bootstrap, PREFIX, workdir, log)
    rng = random.Random(8)
    first_ms, last_ms = end_ms - DAYS * DAY_MS, end_ms - 60_000
    rows, wrk_rows, unequal, compared = [], [], 0, 0
    on, on_url, on_metrics = _serve(bootstrap, workdir, "rollups-on")
    off, off_url, _ = _serve(bootstrap, workdir, "rollups-off", IOTPIPE_QUERY_ROLLUPS="false")
    try:
        _wait_rollups(on_metrics, end_ms)
        for window, (length, n_on, n_off) in WINDOWS.items():
            starts = [rng.randrange(first_ms, last_ms - length) for _ in range(n_on)]
            rss_before = tree_rss_mib(on.pid)
            with_rollups = [_ask(on_url, settings.sensors, lo, lo + length) for lo in starts]
            rss_after = tree_rss_mib(on.pid)
            without = [_ask(off_url, settings.sensors, lo, lo + length)
                       for lo in starts[:n_off]]
            compared += len(without)
            unequal += sum(not _equal(a[1], b[1])
                           for a, b in zip(with_rollups, without, strict=False))
            ms_on, ms_off = [t for t, _ in with_rollups], [t for t, _ in without]
            rows.append((window, n_on, percentile(ms_on, 50), percentile(ms_on, 99), n_off,
                         percentile(ms_off, 50), percentile(ms_off, 99), rss_before, rss_after))
            log(f"rollups {window}: on p50 {rows[-1][2]:.1f} p99 {rows[-1][3]:.1f} ms; off p50 "
                f"{rows[-1][5]:.0f} p99 {rows[-1][6]:.0f} ms; RSS {rss_before:.0f} -> "
                f"{rss_after:.0f} MiB")
        stop_process(off)
        body = json.dumps({s: METRICS for s in settings.sensors} | {"from": "%s", "to": "%s"})
        lua = LUA % (first_ms // 1000, last_ms // 1000, 7 * 86_400, body)
        for cache in ("on", "off"):
            server, proc_url = on, on_url
            if cache == "off":
                stop_process(on)  # idle meanwhile, but its CPU would count as the rest's
                off, proc_url, metrics = _serve(bootstrap, workdir, "cache-off",
                                                IOTPIPE_QUERY_CACHE_MESSAGES="0")
                server = off  # stopped below, or by `finally` if anything fails
                _wait_rollups(metrics, end_ms)
            pid = server.pid
            service_s, busy_s = tree_cpu_s(pid), machine_busy_s()
            r = wrk(proc_url, lua, 64, WRK_S, workdir)
            service_s, busy_s = tree_cpu_s(pid) - service_s, machine_busy_s() - busy_s
            requests = max(r["rps"] * WRK_S, 1)
            r |= {"service_ms": service_s / requests * 1000,
                  "rest_ms": (busy_s - service_s) / requests * 1000, "busy": busy_s / WRK_S}
            wrk_rows.append((cache, r))
            log(f"rollups 64 clients, cache {cache}: {r['rps']:.0f} req/s, p50 {r['p50']:.1f} "
                f"p99 {r['p99']:.1f} ms, errors {errors_cell(r)}; CPU per request: service "
                f"{r['service_ms']:.1f} ms, rest {r['rest_ms']:.1f} ms; cores busy "
                f"{r['busy']:.2f}")
            stop_process(server)
    finally:
        stop_process(on)
        stop_process(off)
    table = "\n".join(
        f"| {w} | {n1} | {a50:.1f} | {a99:.1f} | {n0} | {b50:,.0f} | {b99:,.0f} | "
        f"{b50 / a50:,.0f}x | {r0:.0f} -> {r1:.0f} |"
        for w, n1, a50, a99, n0, b50, b99, r0, r1 in rows)
    load = "\n".join(f"| 64 | {c} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                     f"{errors_cell(r)} | {r['service_ms']:.1f} | {r['rest_ms']:.1f} | "
                     f"{r['busy']:.2f} |" for c, r in wrk_rows)
    return (
        "## Rollups\n\n"
        f"Data: {DAYS} days of {DEVICES} devices per sensor at 1 reading/s ({readings:,} "
        "readings), each second's devices in random order at jittered moments. The stream job "
        f"(`ours`, availableNow, a fresh JVM) rolled them up at {stream['rate']:,.0f} "
        f"readings/s ({stream['rows']:,} in {stream['seconds']:.0f} s). Then windows at random "
        "positions, asked one at a time of gunicorn (defaults: 2 workers, 2 readers each) with "
        "rollups on and off (`IOTPIPE_QUERY_ROLLUPS=false`, the raw path); a request asks 6 "
        "metrics of 3 sensors; the first requests of each size are asked of both and their "
        f"answers compared: {compared - unequal} of {compared} equal (1e-9 relative). RSS: the "
        "rollups service's process tree before -> after that window size.\n\n"
        "| window | requests on | p50 ms on | p99 ms on | requests off | p50 ms off | "
        "p99 ms off | speed-up p50 | RSS MiB |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n" + table +
        "\n\n64 concurrent clients (wrk, 60 s), each request a random window of 1 minute to 7 "
        "days, rollups on, the worker's window cache on (default) and off "
        "(`IOTPIPE_QUERY_CACHE_MESSAGES=0`). CPU per request: the service's process tree, and "
        "the rest of the machine (the broker, wrk); cores busy: of the 2, on average:\n\n"
        "| clients | window cache | requests/s | p50 ms | p99 ms | errors | service CPU "
        "ms/request | rest CPU ms/request | cores busy |\n"
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n" + load +
        "\n\nTargets: 7-day window p99 <= 100 ms with rollups; any window p99 <= 150 ms; "
        "64 clients >= 500 requests/s with p99 <= 150 ms and 0 errors; RSS flat as the window "
        "grows.")
