"""The whole pipeline on this machine: broker, topics, sensors, query API and streaming app.

`run` keeps it in the foreground with a live table and stops everything on Ctrl-C; `up`
starts the same processes detached (their PIDs in <data dir>/run/pids.json) and `down` stops
them by PID, the broker last so that the sensors can flush.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from iotpipe.core.settings import Settings
from iotpipe.localstack.kafka_broker import KafkaBroker
from iotpipe.localstack.maven import kafka_libs, kafka_version
from iotpipe.localstack.processes import start_service, stop_pid, wait_healthy
from iotpipe.localstack.status import StatusBoard
from iotpipe.localstack.topics import ensure_topics

log = logging.getLogger("iotpipe.stack")
STOP_ORDER = ("sensors", "stream", "query", "broker")


class StackError(RuntimeError):
    pass


def _port_of(bootstrap: str) -> int:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        raise StackError(f"the local stack runs its broker on loopback, not {bootstrap}")
    return int(port)


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def stream_available() -> bool:
    return importlib.util.find_spec("pyspark") is not None and importlib.util.find_spec(
        "iotpipe.stream.__main__") is not None


class LocalStack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data = Path(settings.data_dir).resolve()
        self.run_dir = self.data / "run"
        self.pids_file = self.run_dir / "pids.json"

    def running(self) -> dict[str, int]:
        try:
            pids = json.loads(self.pids_file.read_text())
        except (OSError, ValueError):
            return {}
        alive = {}
        for name, pid in pids.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 0)
                alive[name] = pid
        return alive

    def start(self, detach: bool) -> dict[str, subprocess.Popen[bytes]]:
        s = self.settings
        if self.running():
            raise StackError(f"already running ({self.pids_file}); stop it with `make down`")
        port = _port_of(s.kafka.bootstrap)
        for p, what in ((port, "Kafka"), (s.query_port, "the query API"),
                        (s.query_metrics_port, "the query metrics")):
            if _port_busy(p):
                raise StackError(f"port {p} for {what} is taken by another program")
        kafka_libs()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        broker = KafkaBroker(self.data / "kafka", port=port, heap=s.kafka_heap)
        log.info("starting Kafka %s on %s (data in %s)", kafka_version(), broker.bootstrap,
                 broker.data_dir)
        broker.start()
        assert broker.process is not None
        procs: dict[str, subprocess.Popen[bytes]] = {"broker": broker.process}
        try:
            created = ensure_topics(s)
            log.info("topics: %s", ", ".join(map(s.topic, s.sensors)) +
                     (f" (created {', '.join(created)})" if created else ""))
            services = ["query", "sensors"] + (["stream"] if stream_available() else [])
            for name in services:
                procs[name] = start_service(name, self.run_dir / f"{name}.log", detach=detach)
            self._save({n: p.pid for n, p in procs.items()})
            wait_healthy(f"http://{s.query_host}:{s.query_port}/health", 60, procs["query"])
        except BaseException:
            self.stop()
            raise
        return procs

    def _save(self, pids: dict[str, int]) -> None:
        self.pids_file.write_text(json.dumps(pids))

    def stop(self) -> list[str]:
        """Stop every process of the stack by PID; return the names stopped."""
        try:
            pids = json.loads(self.pids_file.read_text())
        except (OSError, ValueError):
            return []
        stopped = []
        for name in STOP_ORDER:
            if name in pids:
                stop_pid(pids[name], timeout_s=40 if name == "stream" else 30)
                stopped.append(name)
        self.pids_file.unlink(missing_ok=True)
        return stopped

    def run_foreground(self) -> None:
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on SIGTERM too
        procs = self.start(detach=False)
        board = StatusBoard(self.settings, procs)
        print(f"iotpipe is running: API http://{self.settings.query_host}:"
              f"{self.settings.query_port}, logs in {self.run_dir}. Ctrl-C stops everything.",
              flush=True)
        try:
            while True:
                board.show()
                dead = [n for n, p in procs.items() if p.poll() is not None]
                if dead:
                    print(f"{', '.join(dead)} exited; see {self.run_dir}/*.log", file=sys.stderr)
                    break
                time.sleep(2)
        except KeyboardInterrupt:
            print("\nstopping...", flush=True)
        finally:
            self.stop()
