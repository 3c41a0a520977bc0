"""The service processes of the local stack: the same commands the containers run.

`SERVICE_COMMANDS` is what the Helm chart's containers run too (a test compares them), so the
local stack exercises exactly the cluster's entry points; only the interpreter differs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVICE_COMMANDS: dict[str, tuple[str, ...]] = {
    "sensors": ("python", "-m", "iotpipe.sensors"),
    "query": ("python", "-m", "iotpipe.query"),
    "stream": ("python", "-m", "iotpipe.stream"),
}


def local_argv(service: str) -> list[str]:
    """The container command with this machine's interpreter (the project venv)."""
    _python, *rest = SERVICE_COMMANDS[service]
    return [sys.executable, *rest]


def start_service(service: str, log_file: Path, env: dict[str, str] | None = None,
                  detach: bool = False) -> subprocess.Popen[bytes]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        return subprocess.Popen(local_argv(service), stdout=out, stderr=subprocess.STDOUT,
                                env=os.environ | (env or {}), start_new_session=detach)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM one of our children, wait, SIGKILL if it lingers; return its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def stop_pid(pid: int, timeout_s: float = 30.0) -> bool:
    """SIGTERM, wait, then SIGKILL a process known only by PID (e.g. from `make up`); True if
    it is gone. For our own children use stop_process, which keeps their exit status."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    time.sleep(0.2)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child: probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post_json(url: str, body: object, timeout_s: float = 10.0,
                   headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"} | (headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
                 ) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if http_get(url, 1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g}s")
