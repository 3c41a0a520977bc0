"""The service processes of the local stack: the same commands the containers run.

`SERVICE_COMMANDS` is what the Helm chart's containers run too (a test compares them), so the
local stack exercises exactly the cluster's entry points; only the interpreter differs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
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
    """SIGTERM one of our children, wait, SIGKILL if it lingers; return its exit status.
    Processes it started and that outlive it (a Spark JVM whose shutdown hangs) are stopped
    too: left alone they would hold ports and CPU with no parent to stop them."""
    started = tree_pids(proc.pid)[1:] if proc.poll() is None else []
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    terminate([p for p in started if pid_alive(p)], LEFT_BEHIND_S)
    return proc.returncode


LEFT_BEHIND_S = 10.0  # after SIGTERM, for what a stopped process left behind; then SIGKILL


def child_pids(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(c) for c in (task / "children").read_text().split()]
    return kids


def tree_pids(pid: int) -> list[int]:
    """A process and all its live descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += child_pids(p)
    return found


def stop_pid(pid: int, timeout_s: float = 30.0) -> bool:
    """SIGTERM, wait, then SIGKILL a process known only by PID; True if it is gone. For our own
    children use stop_process, which keeps their exit status."""
    terminate([pid], timeout_s)
    return not pid_alive(pid)


def terminate(pids: list[int], timeout_s: float) -> None:
    """SIGTERM every pid, wait up to timeout_s for all of them, then SIGKILL the rest."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while any(pid_alive(p) for p in pids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        else:
            return


def pid_alive(pid: int) -> bool:
    """False once the process is gone or a zombie (reaped here if it is our child)."""
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
    try:  # an orphan's zombie waits for a reaper that a container may not have
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
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
                 failed: Callable[[], str | None] | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits or `failed` says why."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        why = failed() if failed is not None else None
        if why:
            raise RuntimeError(why)
        try:
            if http_get(url, 1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:g}s")
