"""The local stack's process supervisor: supervisord (PyPI `supervisor`), configured from the
settings.

supervisord gives what a hand-written launcher lacked: it restarts a component that exits
unexpectedly (a quick failure is retried after a growing pause and given up on, FATAL, after a
few: a crash loop is reported, not spun), keeps one log per component, starts and stops them by
name, and stops them in reverse priority order (the sensors first so that they flush, the
broker last). This module writes its config, starts it detached and talks to it over its unix
socket (XML-RPC); `stack.py` decides what to start when.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from iotpipe.localstack.processes import pid_alive


@dataclass(frozen=True)
class Program:
    priority: int  # start order; supervisord stops in the reverse order
    stop_wait_s: int  # SIGTERM, then SIGKILL to the process group after this long


PROGRAMS: dict[str, Program] = {
    "broker": Program(10, 30),
    "query": Program(20, 45),  # at least: gunicorn's graceful timeout and a margin
    "stream": Program(30, 90),  # as the chart's: a running batch, its rollups, Spark's stop
    "sensors": Program(40, 40),  # flushes its producer (up to 35 s: fleet.py) before it exits
}
START_SECONDS = 10  # alive this long = started (the broker and gunicorn fail within seconds)
START_RETRIES = 3  # quick failures in a row (paused 1, 2, 3 s) before FATAL
LOG_BYTES = "20MB"
_EVENT = re.compile(r"(spawned|exited): '?([\w.-]+)'? (?:with pid \d+|\((.*)\))$", re.M)
_STARTED = "supervisord started with pid"


class SupervisorError(RuntimeError):
    pass


_CUT = re.compile(r"[\r\n]|\s[;#]")


def _quote(value: str) -> str:
    """A config value: supervisord expands %(name)s, so a literal % is doubled."""
    return value.replace("%", "%%")


def render_config(run_dir: Path, commands: dict[str, list[str]], env: dict[str, str],
                  cwd: Path, stop_wait_s: dict[str, int] | None = None) -> str:
    """supervisord's config for these component commands, logs and the IOTPIPE_* settings;
    `stop_wait_s`: the waits before SIGKILL, where not PROGRAMS' (the settings' deadlines)."""
    bad = sorted(k for k, v in env.items() if '"' in v)
    if bad:
        raise SupervisorError(f"{', '.join(bad)}: a value with a double quote cannot be "
                              "passed to the supervised processes")
    # its INI reader ends a line at a newline and a value at " ;" or " #" (a comment), and
    # strips a value's ends: the working folder is the one path written as a whole value
    workdir = ("the working folder", str(cwd))
    for what, value in [*env.items(), ("the data folder", str(run_dir)), workdir,
                        *((name, shlex.join(argv)) for name, argv in commands.items())]:
        if _CUT.search(value) or ((what, value) == workdir and value != value.strip()):
            raise SupervisorError(f"{what}: a value holding a line break, or ';' or '#' after "
                                  "a space, or a working folder starting or ending with a space, "
                                  f"cannot be written to supervisord's config: {value!r}")
    sock = run_dir / "supervisor.sock"
    if len(str(sock).encode()) > 100:
        raise SupervisorError(f"{sock}: the path is too long for a unix socket; "
                              "set IOTPIPE_DATA_DIR to a shorter folder")
    environment = ",".join(f'{k}="{_quote(v)}"' for k, v in sorted(env.items()))
    lines = [f"; written by `iotpipe up` from the settings: {json.dumps(env, sort_keys=True)}",
             "[supervisord]", f"logfile={_quote(str(run_dir / 'supervisord.log'))}",
             f"logfile_maxbytes={LOG_BYTES}", "logfile_backups=1",
             f"pidfile={_quote(str(run_dir / 'supervisord.pid'))}",
             f"directory={_quote(str(cwd))}", "identifier=iotpipe",
             "[unix_http_server]", f"file={_quote(str(sock))}", "chmod=0700",
             "[rpcinterface:supervisor]",
             "supervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface",
             "[supervisorctl]", f"serverurl=unix://{_quote(str(sock))}"]
    for name, argv in commands.items():
        p = PROGRAMS[name]
        lines += [f"[program:{name}]", f"command={_quote(shlex.join(argv))}",
                  f"directory={_quote(str(cwd))}", f"priority={p.priority}",
                  "autostart=false", "autorestart=true", f"startsecs={START_SECONDS}",
                  f"startretries={START_RETRIES}", "stopsignal=TERM",
                  f"stopwaitsecs={(stop_wait_s or {}).get(name, p.stop_wait_s)}",
                  "killasgroup=true",
                  "redirect_stderr=true",
                  f"stdout_logfile={_quote(str(run_dir / f'{name}.log'))}",
                  f"stdout_logfile_maxbytes={LOG_BYTES}", "stdout_logfile_backups=2"]
        if environment:
            lines.append(f"environment={environment}")
    return "\n".join(lines) + "\n"


class _UnixConnection(http.client.HTTPConnection):
    """supervisor's own unix-socket connection has no timeout; this one does."""

    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self.path_ = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path_)


class Supervisor:
    """One supervisord per data folder: its config, socket, pid file and log in `run_dir`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.conf = run_dir / "supervisord.conf"
        self.sock = run_dir / "supervisor.sock"
        self.pidfile = run_dir / "supervisord.pid"
        self.log = run_dir / "supervisord.log"
        self.url = f"unix://{self.sock}"

    def rpc(self, timeout_s: float = 10.0) -> Any:
        """supervisord's XML-RPC interface (its calls are looked up at run time: Any)."""
        transport = SupervisorTransport(None, None, self.url)
        transport._get_connection = lambda: _UnixConnection(str(self.sock), timeout_s)
        return xmlrpc.client.ServerProxy("http://localhost", transport=transport)

    def alive(self) -> bool:
        try:
            return self.rpc(5).supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def launch(self, config: str, timeout_s: float = 30.0) -> None:
        """Write the config and start supervisord (it detaches itself); return once it answers."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(config)
        self.conf.chmod(0o600)
        out = self.run_dir / "supervisord.out"
        with open(out, "wb") as f:
            done = subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c",
                                   str(self.conf)], stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout_s, check=False, start_new_session=True)
        if done.returncode != 0:
            raise SupervisorError(f"supervisord did not start:\n{out.read_text()[-2000:]}")
        deadline = time.monotonic() + timeout_s
        while not self.alive():
            if time.monotonic() > deadline:
                raise SupervisorError(f"supervisord did not answer on {self.sock}")
            time.sleep(0.2)

    def running_config(self) -> dict[str, str] | None:
        """The settings the running supervisord was configured with (the config's first line)."""
        try:
            head = self.conf.read_text().split("\n", 1)[0]
            return json.loads(head.split(": ", 1)[1])
        except (OSError, IndexError, ValueError):
            return None

    def infos(self) -> dict[str, dict]:
        return {i["name"]: i for i in self.rpc().supervisor.getAllProcessInfo()}

    def start(self, name: str) -> None:
        self.rpc().supervisor.startProcess(name, False)

    def shutdown(self, timeout_s: float) -> None:
        """Stop every component in order, then supervisord itself; wait until it is gone."""
        pid = self.pid()
        try:
            self.rpc().supervisor.shutdown()
        except (OSError, xmlrpc.client.Error):
            return
        deadline = time.monotonic() + timeout_s
        while pid and pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def history(self) -> dict[str, tuple[int, str]]:
        """Per component since supervisord started (from its log): restarts, and how it last
        exited ('' if it has not)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return {}
        spawned: dict[str, int] = {}
        exits: dict[str, str] = {}
        for event, name, why in _EVENT.findall(text[max(0, text.rfind(_STARTED)):]):
            if event == "spawned":
                spawned[name] = spawned.get(name, 0) + 1
            else:
                exits[name] = why
        return {n: (max(0, spawned.get(n, 0) - 1), exits.get(n, "")) for n in spawned | exits}

    def leftovers(self) -> dict[str, list[int]]:
        """This stack's processes, found by the socket URL that supervisord puts in its
        children's environment (and supervisord by its config path): once it no longer answers,
        those it left behind. Linux only (/proc)."""
        found: dict[str, list[int]] = {}
        marker = f"SUPERVISOR_SERVER_URL={self.url}".encode()
        me = os.getpid()
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                env = (proc / "environ").read_bytes().split(b"\0")
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(proc.name) == me:
                continue
            # its config path as one whole argument: that of another checkout may end alike
            if str(self.conf).encode() in cmd and b"supervisor.supervisord" in cmd:
                found.setdefault("supervisord", []).append(int(proc.name))
            elif marker in env:
                name = next((e.split(b"=", 1)[1].decode() for e in env
                             if e.startswith(b"SUPERVISOR_PROCESS_NAME=")), "?")
                found.setdefault(name, []).append(int(proc.name))
        return found
