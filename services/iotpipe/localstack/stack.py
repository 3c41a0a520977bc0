"""The whole pipeline on this machine: broker, topics, sensors, query API and streaming app,
supervised by supervisord (see supervisor.py).

`up` starts what is not running, the broker first (its storage formatted, its topics created:
the two steps supervisord cannot do), and returns once the API answers; run twice it says all is
running; after a killed supervisor it stops what was left and starts afresh. `run` is `up`, the
live table until Ctrl-C, then `down`. `down` asks supervisord to stop everything in order.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import logging
import os
import signal
import socket
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from iotpipe.core.settings import ENV_VARS, Settings
from iotpipe.localstack.kafka_broker import KafkaBroker
from iotpipe.localstack.maven import kafka_version
from iotpipe.localstack.processes import local_argv, terminate, wait_healthy
from iotpipe.localstack.status import StatusBoard, component_lines
from iotpipe.localstack.supervisor import (
    PROGRAMS,
    START_RETRIES,
    START_SECONDS,
    Supervisor,
    render_config,
)
from iotpipe.localstack.topics import ensure_topics

log = logging.getLogger("iotpipe.stack")
DOWN_STATES = ("STOPPED", "EXITED", "FATAL", "UNKNOWN")  # what `up` starts again


class StackError(RuntimeError):
    pass


def _port_of(bootstrap: str) -> int:
    """The local broker's port (Settings checked the form; 9092 when none is given)."""
    server = bootstrap.split(",")[0].strip().rpartition("://")[2]  # (PLAINTEXT://host:port)
    host, colon, port = server.rpartition(":")
    if not colon or "]" in port:  # no port (IPv6 brackets end the host)
        host, port = server, "9092"
    if host not in ("127.0.0.1", "localhost"):
        raise StackError(f"the local stack runs its broker on loopback, not {bootstrap}")
    return int(port)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _ignore_stop_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _stop_once(signum: int, frame: object) -> None:
    """The first stop signal ends `run`'s table; the next ones (a second Ctrl-C, or the
    terminal closing: bash sends its SIGHUP again, the kernel one more) are ignored from here
    on, so that they cannot cut `down` short and leave the stack running."""
    _ignore_stop_signals()
    raise KeyboardInterrupt


LOCK_WAIT_S = 2.0


def _locked(f: IO[str], kind: int, wait_s: float) -> bool:
    """Take the lock of file `f` (released when it is closed), trying for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(f, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


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
        self.supervisor = Supervisor(self.run_dir)
        self.components = ["broker", "query", *(["stream"] if stream_available() else []),
                           "sensors"]  # start order

    @functools.cached_property
    def broker(self) -> KafkaBroker:
        if self.settings.kafka.security_protocol != "PLAINTEXT":
            raise StackError("the local stack's broker takes PLAINTEXT clients only: unset "
                             "IOTPIPE_KAFKA_SECURITY_PROTOCOL (and the SASL and SSL settings)")
        return KafkaBroker(self.data / "kafka", port=_port_of(self.settings.kafka.bootstrap),
                           heap=self.settings.kafka_heap, log_file=self.run_dir / "broker.log")

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """One `up`/`down` at a time per data folder (two would race to start supervisors)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "stack.lock", "w") as f:
            if not _locked(f, fcntl.LOCK_EX, LOCK_WAIT_S):  # (`make status` looks a moment)
                raise StackError(f"another `iotpipe up/run/down` is changing {self.data}")
            yield

    def _being_changed(self) -> bool:
        """Whether an `up`/`run`/`down` holds the lock now (a look that creates nothing)."""
        try:
            with open(self.run_dir / "stack.lock") as f:
                return not _locked(f, fcntl.LOCK_SH, 0)
        except FileNotFoundError:
            return False

    def up(self) -> list[str]:
        """Start the components that are not running; return their names ([]: all were)."""
        with self._changing():
            if self.supervisor.alive():
                self._warn_if_settings_changed()
            else:
                self._launch()
            infos = self.supervisor.infos()
            if set(self.components) - set(infos):
                raise StackError("the running stack lacks "
                                 f"{', '.join(sorted(set(self.components) - set(infos)))}; "
                                 "`make down` then `make up` adds it")
            down = [n for n in self.components if infos[n]["statename"] in DOWN_STATES]
            if down:
                self._start(down)
            else:  # (one being restarted by supervisord is not running yet: waited for)
                self._wait_running(self.components, START_SECONDS + 60)
            return down

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k in ENV_VARS}

    def _warn_if_settings_changed(self) -> None:
        if self.supervisor.running_config() != self._env():
            log.warning("the IOTPIPE_* settings differ from those the running stack was started "
                        "with; `make down` then `make up` applies them")

    def _launch(self) -> None:
        """A fresh supervisord: first stop whatever a killed one left behind (never two brokers
        on one data folder), then check the ports."""
        if self._stop_leftovers():
            log.warning("stopped processes left by a supervisor that is gone")
        s = self.settings
        ports = ((self.broker.port, "Kafka"), (s.query_port, "the query API"),
                 (s.query_metrics_port, "the query metrics"),
                 *([(s.stream_metrics_port, "the stream metrics")]
                   if "stream" in self.components else []),
                 (s.sensors_metrics_port, "the sensors' metrics"))
        named: dict[int, str] = {}
        for port, what in ports:
            if port in named:
                raise StackError(f"port {port} is set for both {named[port]} and {what}")
            named[port] = what
            if _port_busy(port):
                raise StackError(f"port {port} for {what} is taken by another program")
        log.info("starting Kafka %s on %s (data in %s)", kafka_version(), self.broker.bootstrap,
                 self.broker.data_dir)
        commands = {"broker": self.broker.command()} | {
            n: local_argv(n) for n in self.components if n != "broker"}
        self.supervisor.launch(render_config(self.run_dir, commands, self._env(), Path.cwd(),
                                             {n: self._stop_wait_s(n) for n in commands}))

    def _stop_wait_s(self, name: str) -> int:
        """How long a component may take to stop before SIGKILL: the query service's requests
        under way finish (gunicorn's graceful timeout, with a margin)."""
        longer = {"query": self.settings.query_stop_s + 10}
        return max(PROGRAMS[name].stop_wait_s, longer.get(name, 0))

    def _failed(self, name: str) -> str | None:
        info = self.supervisor.infos()[name]
        if info["statename"] == "FATAL":
            return (f"{name} keeps exiting (given up after {START_RETRIES} quick retries); "
                    f"see {info['stdout_logfile']} or `make status`")
        return None

    def _start(self, names: list[str]) -> None:
        """The broker first and ready, the topics there, then its clients."""
        s = self.settings
        if "broker" in names:
            self.supervisor.start("broker")
        self.broker.wait_ready(90, lambda: self._failed("broker"))
        created = ensure_topics(s)
        log.info("topics: %s", ", ".join(map(s.topic, s.sensors)) +
                 (f" (created {', '.join(created)})" if created else ""))
        for name in names:
            if name != "broker":
                self.supervisor.start(name)
        wait_healthy(f"http://{s.query_address}/health", 60,
                     failed=lambda: self._failed("query"))
        self._wait_running(names, START_SECONDS + 60)

    def _wait_running(self, names: list[str], timeout_s: float) -> None:
        """Until supervisord counts each as started (alive START_SECONDS): then `make status`
        says running."""
        deadline = time.monotonic() + timeout_s
        while True:
            infos = self.supervisor.infos()
            waiting = [n for n in names if infos[n]["statename"] != "RUNNING"]
            if not waiting:
                return
            why = next(filter(None, map(self._failed, waiting)), None)
            if why:
                raise StackError(why)
            if time.monotonic() > deadline:
                raise StackError(f"{', '.join(waiting)} not running after {timeout_s:g}s; "
                                 "see `make status`")
            time.sleep(0.5)

    def _stop_leftovers(self) -> list[str]:
        """Stop, in the supervisor's order, processes whose supervisor is gone."""
        found = self.supervisor.leftovers()
        order = ["supervisord", *sorted(PROGRAMS, key=lambda n: -PROGRAMS[n].priority)]
        for name in order + sorted(set(found) - set(order)):
            if name in found:
                wait = self._stop_wait_s(name) if name in PROGRAMS else 30
                terminate(found[name], wait)
        return sorted(found)

    def down(self) -> list[str]:
        """Stop every component (the sensors first, the broker last); return the names stopped."""
        with self._changing():
            stopped: list[str] = []
            if self.supervisor.alive():
                stopped = [n for n, i in self.supervisor.infos().items()
                           if i["statename"] not in DOWN_STATES]
                self.supervisor.shutdown(sum(map(self._stop_wait_s, PROGRAMS)) + 30)
            left = self._stop_leftovers()
            return stopped + [n for n in left if n not in stopped]

    def status(self) -> tuple[list[str], bool]:
        """One line per component (and a stopped one's last log lines); True if all run."""
        if not self.supervisor.alive():
            if self._being_changed():  # (a supervisor shutting down answers as none)
                return [f"iotpipe is being started or stopped in {self.data} by another "
                        "`iotpipe up/run/down`"], False
            left = self.supervisor.leftovers()
            lines = [f"iotpipe is not running (no supervisor answers on {self.supervisor.sock})"]
            if left:
                lines.append("left behind by a killed supervisor: " + ", ".join(
                    f"{n} (pid {', '.join(map(str, p))})" for n, p in sorted(left.items())) +
                    "; `make up` or `make down` stops them")
            return lines, False
        infos = sorted(self.supervisor.infos().values(), key=lambda i: PROGRAMS[i["name"]].priority)
        lines = component_lines(infos, self.supervisor.history())
        return lines, all(i["statename"] == "RUNNING" for i in infos)

    def run_foreground(self) -> None:
        """`up`, the live table until Ctrl-C (or SIGTERM, or the terminal closing), `down`.
        Ctrl-C too is set here: a process started in the background by a script inherits
        SIGINT ignored, and Python then leaves it so."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, _stop_once)
        board = StatusBoard(self.settings)
        try:
            self.up()
            print(f"iotpipe is running: API http://{self.settings.query_address}, logs in "
                  f"{self.run_dir}. Ctrl-C stops everything.",
                  flush=True)
            while True:
                board.show(self._states())
                time.sleep(2)
        except KeyboardInterrupt:
            print("\nstopping...", flush=True)
        finally:
            # (`up` may have failed; a first stop signal may land right then: not `suppress`,
            # whose __enter__ would be a place for it to land outside)
            try:  # noqa: SIM105
                _ignore_stop_signals()
            except KeyboardInterrupt:
                pass
            self.down()

    def _states(self) -> str:
        try:
            infos = self.supervisor.infos()
        except (OSError, xmlrpc.client.Error):
            return "supervisor not answering"
        return "  ".join(f"{n}:{infos[n]['statename'].lower()}" for n in self.components)
