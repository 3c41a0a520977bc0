"""Slow clients: the load section's 1-minute-window run with and without 500 stalled
connections held open (each one the issue's client: headers, 1 byte of a 1000-byte body, or
half of its headers), and /health latency throughout."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Self, cast

from iotpipe.bench.load_bench import _load_last_hour, _script, _serve, errors_cell, wrk
from iotpipe.bench.measure import percentile
from iotpipe.core.settings import Settings
from iotpipe.localstack.processes import stop_process

PREFIX, STALLED, CLIENTS, SECONDS = "slow-", 500, 16, 30
STALLS = (b"POST /compute/metrics HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
          b"Content-Length: 1000\r\n\r\n{", b"POST /compute/metrics HTTP/1.1\r\nHost: bench\r\n")


class Background:
    """`_run` in a thread for the duration of a `with` block (it returns once `_stop` is set)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


class Stallers(Background):
    """Keeps `count` stalled connections open: one the server closes (408) is opened again."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__()
        self.port, self.count, self.reopened = port, count, 0

    def _open(self, sel: selectors.BaseSelector, i: int) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(STALLS[i % 2])
        sel.register(sock, selectors.EVENT_READ, i)

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            for i in range(self.count):
                self._open(sel, i)
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    sel.unregister(key.fileobj)
                    cast(socket.socket, key.fileobj).close()
                    self._open(sel, key.data)
                    self.reopened += 1
            for key in list(sel.get_map().values()):
                cast(socket.socket, key.fileobj).close()


class HealthProbe(Background):
    """GET /health every 50 ms on a new connection; latencies in ms, failures (5 s timeout)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.failures = url, 0
        self.ms: list[float] = []

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    resp.read()
                self.ms.append((time.perf_counter() - t) * 1000)
            except OSError:
                self.failures += 1


def run(bootstrap: str, workdir: Path, log: Callable[[str], None]) -> str:
    settings = Settings.from_env({"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap,
                                  "IOTPIPE_TOPIC_PREFIX": PREFIX})
    lua = _script(_load_last_hour(settings), "1 minute")
    proc, url = _serve(bootstrap, workdir, True, PREFIX)
    port = int(url.split(":")[2].split("/")[0])
    rows = []
    try:
        # the window cache fills, in every worker: a keep-alive connection stays with the
        # worker that accepted it, and of wrk's connections, opened at once, one worker may
        # take most, so each request comes on a new connection here; not reported
        wrk(url, lua + 'wrk.headers["Connection"] = "close"\n', CLIENTS, 20, workdir)
        for stalled in (0, STALLED, 0, STALLED):  # twice each, in turns: the machine drifts
            with contextlib.ExitStack() as stack:
                stallers = stack.enter_context(Stallers(port, stalled)) if stalled else None
                time.sleep(2 if stalled else 0)  # all of them open before wrk starts
                health = stack.enter_context(HealthProbe(url.replace("compute/metrics",
                                                                     "health")))
                r = wrk(url, lua, CLIENTS, SECONDS, workdir)
            reopened = stallers.reopened if stallers else 0
            rows.append((stalled, r, percentile(health.ms, 99), max(health.ms),
                         health.failures, reopened))
            log(f"slow clients {stalled}: {r['rps']:.0f} req/s, p99 {r['p99']:.1f} ms, errors "
                f"{errors_cell(r)}; /health p99 {rows[-1][2]:.1f} ms, max {rows[-1][3]:.1f} "
                f"ms, failed {health.failures}; stalled connections reopened {reopened}")
    finally:
        stop_process(proc)
    table = "\n".join(
        f"| {s} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {errors_cell(r)} | "
        f"{hp99:.1f} | {hmax:.1f} | {hfail} | {reopened} |"
        for s, r, hp99, hmax, hfail, reopened in rows)
    return ("## Slow clients: 1-minute windows while 500 connections stall\n\n"
            f"The load section's server and data (defaults: 2 workers x 8 threads, window cache "
            f"on and filled by a 20 s run first, a new connection per request so that it fills "
            f"in both workers); wrk with {CLIENTS} keep-alive clients asks "
            f"1-minute windows for {SECONDS} s, without and with {STALLED} stalled connections, "
            "twice each in turns. Half the stalled clients send the headers of a POST with "
            "`Content-Length: 1000` and 1 byte of body, half send half of the headers; one the "
            "server closes (408 after `IOTPIPE_QUERY_READ_DEADLINE_SECONDS`, 10 s, and up to a "
            "fifth more) is opened "
            "again at once. Meanwhile `/health` is asked every 50 ms on a new connection "
            "(failure: no answer within 5 s).\n\n"
            "| stalled connections | requests/s | p50 ms | p99 ms | errors | /health p99 ms | "
            "/health max ms | /health failures | stalled reopened after 408 |\n"
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n" + table +
            "\n\nTarget: requests/s and p99 within 10 % of the runs without stalled "
            "connections; `/health` p99 <= 100 ms throughout.")
