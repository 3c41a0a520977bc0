"""Load on the real gunicorn service: wrk with N keep-alive clients for 60 s, small and large
windows; requests/s, latency percentiles, errors and the process tree's RSS before/after."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from confluent_kafka import Producer

from iotpipe.bench.measure import tree_rss_mib
from iotpipe.core import wire
from iotpipe.core.settings import Settings
from iotpipe.localstack.kafka_broker import free_port
from iotpipe.localstack.processes import http_post_json, start_service, stop_process, wait_healthy
from iotpipe.localstack.topics import ensure_topics
from iotpipe.query.timestamps import format_ms

DEVICES, HOUR_S, SECONDS = 10, 3600, 60
# (clients, window, window cache on, seconds): 1-minute windows at random places in the last
# hour (each request another window, all closed to late readings) - the first run with the cache
# on starts from an empty cache -, the last minute (open: the ends are looked up; sensors keep
# writing), the whole hour
RUNS = ((16, "1 minute", False, 60), (16, "1 minute", True, 20), (16, "1 minute", True, 60),
        (64, "1 minute", True, 60), (16, "last minute", True, 60), (16, "1 hour", True, 60))
# wrk scripts (formatted with %): the shared head, then each bench's window choice
LUA_HEAD = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 1
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  math.randomseed(id * 7919 + os.time())
end
local function stamp(t)
  return os.date("!%%Y-%%m-%%d %%H:%%M:%%S", t)
end
"""
LUA = LUA_HEAD + """local first, last, span, body = %d, %d, %d, [[%s]]
function request()
  local from = first
  if last > first then from = math.random(first, last) end
  if last < 0 then from = os.time() - span end
  return wrk.format(nil, nil, nil, string.format(body, stamp(from), stamp(from + span)))
end
"""
BODY = json.dumps({"temperature": ["count", "average"], "humidity": ["min", "max"],
                   "pressure": ["count", "stddev"], "from": "%s", "to": "%s"})


def fleet_second(rng: random.Random, devices: int, second_ms: int) -> Iterator[tuple[int, int]]:
    """(device, ts) of one second of a fleet of independent devices: each sends once, in a
    random order, at its own jittered moment within the second (not the simulator's turns)."""
    for d in rng.sample(range(devices), devices):
        yield d, second_ms + rng.randrange(1000)


def _load_last_hour(settings: Settings) -> int:
    """An hour of readings, 1/s from each of DEVICES devices per sensor, ending now: every
    second the devices send as a fleet does (see fleet_second)."""
    ensure_topics(settings)
    # small batches, as a live fleet sends them (the broker decompresses a whole batch to find
    # a timestamp in it, so one huge batch would make every offset lookup expensive)
    p = Producer(settings.kafka.client_config() | {"enable.idempotence": True, "linger.ms": 5,
                                                   "compression.type": "lz4",
                                                   "batch.num.messages": 10})
    rng = random.Random(11)
    now = int(time.time() * 1000)
    for sensor in settings.sensors:
        for s in range(HOUR_S):
            for d, ts in fleet_second(rng, DEVICES, now - (HOUR_S - s) * 1000):
                r = wire.Reading(f"{sensor}-{d}", sensor, s, ts, (s * 7 + d) % 101)
                p.produce(settings.topic(sensor), wire.encode(r), wire.key(r), timestamp=ts)
            p.flush(30) if len(p) > 50_000 else p.poll(0)
    assert p.flush(60) == 0
    return now


ERROR_KINDS = ("non2xx", "connect", "read", "write", "timeout")


def wrk(url: str, lua: str, clients: int, seconds: int, workdir: Path) -> dict[str, float]:
    """requests/s, p50 and p99 (ms), and the errors by kind: `non2xx` answers, socket
    `connect`/`read`/`write` errors and `timeout`s (no answer within 30 s); `errors` is
    their sum."""
    script = workdir / "post.lua"
    script.write_text(lua)
    out = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "--latency",
                          "--timeout", "30s", "-s", str(script), url], capture_output=True,
                         text=True, timeout=seconds + 60, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            raise ValueError(f"no {label}% in wrk output:\n{out}")
        return float(m[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m[2]]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise ValueError(f"no requests/s in wrk output:\n{out}")
    kinds = {"non2xx": float(non2xx[1]) if non2xx else 0.0}
    kinds |= dict(zip(ERROR_KINDS[1:], (float(x) for x in socket.groups()) if socket
                      else [0.0] * 4, strict=True))
    return {"rps": float(rps[1]), "p50": ms("50"), "p99": ms("99"),
            "errors": sum(kinds.values())} | kinds


def errors_cell(r: dict[str, float]) -> str:
    """The error count of a wrk run, with its kinds when there are any: `5 (non2xx 3,
    timeout 2)`."""
    kinds = ", ".join(f"{k} {r[k]:.0f}" for k in ERROR_KINDS if r.get(k))
    return f"{r['errors']:.0f} ({kinds})" if kinds else f"{r['errors']:.0f}"


def _script(now_ms: int, window: str) -> str:
    """wrk script: `window` of the loaded hour (which ends at now_ms), another one per request."""
    end_s = now_ms // 1000 - 31  # closed: `to` + allowed lateness (30 s) is in the past
    if window == "1 hour":
        return LUA % (end_s - HOUR_S, end_s - HOUR_S, HOUR_S, BODY)
    if window == "last minute":
        return LUA % (-1, -1, SECONDS, BODY)
    return LUA % (end_s - HOUR_S, end_s - SECONDS, SECONDS, BODY)


def _serve(bootstrap: str, workdir: Path, cache: bool,
           prefix: str = "load-") -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = start_service("query", workdir / f"query-{prefix}log", {
        "IOTPIPE_KAFKA_BOOTSTRAP": bootstrap, "IOTPIPE_TOPIC_PREFIX": prefix,
        "IOTPIPE_QUERY_PORT": str(port), "IOTPIPE_QUERY_METRICS_PORT": str(free_port()),
        "IOTPIPE_LOG_LEVEL": "WARNING",
        "IOTPIPE_QUERY_CACHE_MESSAGES": "250000" if cache else "0"})
    wait_healthy(f"http://127.0.0.1:{port}/health", 60, proc)
    return proc, f"http://127.0.0.1:{port}/compute/metrics"


def run(bootstrap: str, workdir: Path, log: Callable[[str], None]) -> str:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is needed for the load section (make bench installs it)")
    settings = Settings.from_env({"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap,
                                  "IOTPIPE_TOPIC_PREFIX": "load-"})
    now = _load_last_hour(settings)
    rows = []
    sensors = start_service("sensors", workdir / "sensors-load.log", {
        "IOTPIPE_KAFKA_BOOTSTRAP": bootstrap, "IOTPIPE_TOPIC_PREFIX": "load-",
        "IOTPIPE_DEVICES_PER_SENSOR": str(DEVICES), "IOTPIPE_LOG_LEVEL": "WARNING",
        "IOTPIPE_SENSORS_METRICS_PORT": str(free_port())})
    try:
        for cache in (False, True):
            proc, url = _serve(bootstrap, workdir, cache)
            try:
                status, answer = http_post_json(url, json.loads(BODY % (
                    format_ms(now - 91_000), format_ms(now - 31_000))))
                assert status == 200 and answer["errors"] == [], answer
                for clients, window, cached, seconds in RUNS:
                    if cached != cache:
                        continue
                    rss_before = tree_rss_mib(proc.pid)
                    r = wrk(url, _script(now, window), clients, seconds, workdir)
                    rows.append((clients, window, cache, seconds, r, rss_before,
                                 tree_rss_mib(proc.pid)))
                    log(f"load {clients} clients, {window}, cache {'on' if cache else 'off'}, "
                        f"{seconds} s: {r['rps']:.0f} req/s, p50 {r['p50']:.1f} ms, p99 "
                        f"{r['p99']:.1f} ms, errors {errors_cell(r)}")
            finally:
                stop_process(proc)
    finally:
        stop_process(sensors)
    table = "\n".join(
        f"| {c} | {w} | {'on' if k else 'off'} | {s} | {r['rps']:.0f} | {r['p50']:.1f} | "
        f"{r['p99']:.1f} | {errors_cell(r)} | {before:.0f} -> {after:.0f} |"
        for c, w, k, s, r, before, after in rows)
    return ("## Load: the query service under concurrent clients (wrk)\n\n"
            "gunicorn with the defaults (2 workers x 8 threads, 2 reader processes each); data: "
            f"{DEVICES} devices per sensor at 1 reading/s for the last hour, each second's devices "
            "in a random order at jittered moments; a request asks 6 "
            "metrics of 3 sensors. Every request asks another window: *1 minute* starts at a "
            "random second of the hour (closed to late readings), *last minute* ends at the "
            "request's own second (still open: the partitions' ends are looked up), *1 hour* is "
            "the whole hour. The cache is the worker's window cache "
            "(`IOTPIPE_QUERY_CACHE_MESSAGES`; off = 0); the first 20 s with it on start from "
            "an empty cache, the runs after it go on with what it holds. Meanwhile the sensor "
            f"simulator writes {DEVICES} devices per sensor at 1 reading/s. RSS is the "
            "service's whole process tree.\n\n"
            "| clients | window | cache | seconds | requests/s | p50 ms | p99 ms | errors | RSS "
            "MiB before -> after |\n| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- "
            "|\n" + table +
            "\n\nTarget: >= 300 requests/s with p99 < 100 ms for 1-minute windows, 0 errors.")
