"""The local stack as a user runs it (`iotpipe up/status/run/down`, the processes `make` runs),
under supervisord: each component killed -9 in turn comes back; a crash loop is reported and
`up` heals it; `up` after a killed supervisor starts afresh with one broker; nothing the sensors
had acknowledged is lost and the stream counts each reading once; Ctrl-C on `run` stops all.

The tests share one stack and run in file order (each leaves it running for the next).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from iotpipe.core.settings import Settings
from iotpipe.localstack.kafka_broker import free_port
from iotpipe.localstack.processes import http_post_json, terminate
from iotpipe.localstack.supervisor import Supervisor
from iotpipe.query.timestamps import format_ms
from kafka_helpers import read_topics, reference
from stream_reference import wait_counts

pytestmark = [pytest.mark.spark, pytest.mark.faults]
COMPONENTS = ("broker", "query", "stream", "sensors")


def wait_for(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s:g}s")


@dataclass
class Stack:
    env: dict[str, str]
    cwd: Path
    settings: Settings
    supervisor: Supervisor
    sensor_runs: int = 1  # sensor processes that produced readings so far

    def cli(self, *args: str, timeout_s: float = 400) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "iotpipe", *args], env=self.env,
                              cwd=self.cwd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)

    def info(self, name: str) -> dict:
        return self.supervisor.infos()[name]

    def restarted(self, name: str, old_pid: int) -> bool:
        i = self.info(name)
        return i["statename"] == "RUNNING" and i["pid"] not in (0, old_pid)

    def api(self, body: dict) -> tuple[int, dict]:
        url = f"http://127.0.0.1:{self.settings.query_port}/compute/metrics"
        try:
            return http_post_json(url, body, 30)
        except OSError:
            return 0, {}

    def logs(self) -> str:
        run = self.supervisor.run_dir
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}"
                         for f in sorted(run.glob("*.log")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    ports = {f"IOTPIPE_{k}": str(free_port()) for k in (
        "QUERY_PORT", "QUERY_METRICS_PORT", "SENSORS_METRICS_PORT", "STREAM_METRICS_PORT")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTPIPE_")} | ports | {
        "IOTPIPE_DATA_DIR": str(tmp / "data"),
        "IOTPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "IOTPIPE_CHECKPOINT_DIR": str(tmp / "data" / "checkpoints"),
        "IOTPIPE_SENSORS": "temperature,humidity", "IOTPIPE_DEVICES_PER_SENSOR": "2",
        "IOTPIPE_SENSOR_RATE_HZ": "5", "IOTPIPE_KAFKA_TIMEOUT_SECONDS": "2",
        "IOTPIPE_ALLOWED_LATENESS_SECONDS": "600",  # a slow broker restart drops nothing
        "IOTPIPE_QUERY_WORKERS": "1", "IOTPIPE_QUERY_READERS": "1",
        "IOTPIPE_STREAM_CONSOLE": "false"}  # the broker with its default heap, as `make run`
    s = Stack(env, tmp, Settings.from_env(env), Supervisor(tmp / "data" / "run"))
    up = s.cli("up")
    try:
        assert up.returncode == 0, up.stderr + s.logs()
        yield s
    finally:
        s.cli("down", timeout_s=300)
        for pids in s.supervisor.leftovers().values():  # only if a test left some behind
            terminate(pids, 10)


def test_up_again_says_all_runs_and_status_says_so(stack: Stack) -> None:
    again = stack.cli("up")
    assert again.returncode == 0, again.stderr
    assert "already running: nothing to start" in again.stdout
    status = stack.cli("status")
    assert status.returncode == 0, status.stdout
    lines = status.stdout.splitlines()
    for name in COMPONENTS:
        assert any(line.split()[:2] == [name, "running"] and "restarts 0" in line
                   for line in lines), status.stdout
    assert any(line.startswith("temperature") for line in lines)  # then the live table


def _window_now() -> dict:
    now = int(time.time() * 1000)
    return {"temperature": ["count"], "from": format_ms(now - 5_000), "to": format_ms(now)}


def test_each_component_killed_comes_back(stack: Stack) -> None:
    for name in COMPONENTS:
        pid = stack.info(name)["pid"]
        os.kill(pid, signal.SIGKILL)
        if name == "broker":  # the API says 503 while the broker is away, then answers
            codes = [stack.api(_window_now())[0]]
            deadline = time.monotonic() + 180
            while codes[-1] != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
                codes.append(stack.api(_window_now())[0])
            assert 503 in codes and codes[-1] == 200, codes
        if name == "sensors":
            stack.sensor_runs += 1
        try:
            wait_for(f"{name} restarted", lambda n=name, p=pid: stack.restarted(n, p), 240)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{stack.logs()}") from None
    status = stack.cli("status")
    assert status.returncode == 0, status.stdout
    for name in COMPONENTS:
        line = next(li for li in status.stdout.splitlines() if li.startswith(f"{name} "))
        assert " running " in line and "restarts 1" in line, line
        assert "terminated by SIGKILL" in line, line
    assert stack.api(_window_now())[0] == 200


def test_crash_loop_is_reported_and_up_heals_it(stack: Stack) -> None:
    """The sensors' metrics port taken by another program: each start exits at once."""
    stack.supervisor.rpc(120).supervisor.stopProcess("sensors", True)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", stack.settings.sensors_metrics_port))
        holder.listen()
        stack.supervisor.start("sensors")
        wait_for("sensors given up", lambda: stack.info("sensors")["statename"] == "FATAL", 120)
        status = stack.cli("status")
        assert status.returncode == 3, status.stdout
        line = next(li for li in status.stdout.splitlines() if li.startswith("sensors "))
        assert " stopped " in line and "crash loop" in line and "restarts 5" in line, line
        assert "Address already in use" in status.stdout  # the last lines of its log
        assert all(f"{n} " in status.stdout for n in COMPONENTS)
    healed = stack.cli("up")
    assert healed.returncode == 0, healed.stderr
    assert "started sensors;" in healed.stdout
    stack.sensor_runs += 1
    assert stack.cli("status").returncode == 0


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def test_up_after_a_killed_supervisor_starts_afresh(stack: Stack) -> None:
    old = stack.supervisor.pid()
    assert old
    os.kill(old, signal.SIGKILL)
    orphans = wait_for("supervisor gone", lambda: not stack.supervisor.alive() and
                       stack.supervisor.leftovers(), 30)
    assert set(COMPONENTS) <= set(orphans)  # its components still run, unsupervised
    status = stack.cli("status")
    assert status.returncode == 3
    assert "iotpipe is not running" in status.stdout and "left behind" in status.stdout
    up = stack.cli("up")
    assert up.returncode == 0, up.stderr + stack.logs()
    assert "started broker, query, stream, sensors;" in up.stdout
    stack.sensor_runs += 1
    new = stack.supervisor.pid()
    assert new and new != old
    processes = stack.supervisor.leftovers()  # with a live supervisor: all of this stack's
    assert not any(pid in processes.get(n, []) for n in COMPONENTS for pid in orphans[n])
    assert all(_descends_from(p, new) for n in COMPONENTS for p in processes[n]), processes
    brokers = [p for p in processes["broker"]
               if b"kafka.Kafka" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(brokers) == 1


def test_nothing_acknowledged_is_lost_and_the_stream_counts_once(stack: Stack) -> None:
    stack.supervisor.rpc(120).supervisor.stopProcess("sensors", True)  # they flush first
    readings = read_topics(stack.settings)
    seqs: dict[str, list[int]] = defaultdict(list)
    for r in readings:
        seqs[r.device].append(r.seq)
    assert sorted(seqs) == ["humidity-0", "humidity-1", "temperature-0", "temperature-1"]
    # every sensors process logged the seq its devices start from
    logs = sorted(stack.supervisor.run_dir.glob("sensors.log*"))
    firsts = [int(n) for f in logs for n in re.findall(r"seqs from (\d+)", f.read_text())]
    assert len(firsts) == stack.sensor_runs, firsts
    for device, got in seqs.items():
        assert len(got) == len(set(got)), f"{device}: a reading written twice"
        got.sort()
        # one unbroken run of seqs per sensors process: a run starting elsewhere than at a
        # process's first seq follows a lost reading (a restarted process may go on right
        # after the last seq, joining two runs into one)
        starts = [got[0]] + [b for a, b in itertools.pairwise(got) if b != a + 1]
        assert set(starts) <= set(firsts), f"{device}: runs of seqs start at {starts}, {firsts}"
    url = f"http://127.0.0.1:{stack.settings.stream_metrics_port}/metrics"
    want = {s: sum(r.sensor == s for r in readings) for s in stack.settings.sensors}
    wait_counts(url, want, 300, stack.supervisor.run_dir / "stream.log")
    first, last = min(r.ts for r in readings), max(r.ts for r in readings)
    body = {s: ["count", "min", "max", "average"] for s in stack.settings.sensors}
    code, got = stack.api(body | {"from": format_ms(first), "to": format_ms(last)})
    assert code == 200, got
    for s in stack.settings.sensors:
        ref = reference([r for r in readings if r.sensor == s], first, last)
        assert got["result"][s]["count"] == ref["count"] == want[s]
        assert got["result"][s]["min"] == ref["min"] and got["result"][s]["max"] == ref["max"]
        assert got["result"][s]["average"] == pytest.approx(ref["average"])


def test_run_shows_the_table_and_ctrl_c_stops_everything(stack: Stack) -> None:
    """`run` on the running stack starts what is down (the sensors stopped above), shows the
    live table, and on Ctrl-C (SIGINT) stops every process, also when the terminal then
    closes while it stops (SIGHUP, SIGTERM)."""
    run = subprocess.Popen([sys.executable, "-m", "iotpipe", "run"], env=stack.env,
                           cwd=stack.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert run.stdout is not None
    seen: list[bytes] = []
    try:
        while b"sensors:running" not in (seen or [b""])[-1]:  # `up` has its own time limits
            seen.append(run.stdout.readline())
            assert seen[-1] or run.poll() is None, b"".join(seen).decode()[-3000:]
    finally:
        run.send_signal(signal.SIGINT)
    while b"stopping..." not in seen[-1]:
        seen.append(run.stdout.readline())
        assert seen[-1], b"".join(seen).decode()[-3000:]
    for sig in (signal.SIGHUP, signal.SIGTERM):  # while it stops the stack
        run.send_signal(sig)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, (b"".join(seen) + out).decode()[-3000:]
    assert stack.supervisor.leftovers() == {}
    assert not stack.supervisor.alive()
    assert stack.cli("status").returncode == 3
    assert "nothing was running" in stack.cli("down").stdout
