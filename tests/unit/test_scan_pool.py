"""The reader processes' pool: a reader lost during a scan replaces the pool that broke, never
the fresh one that other requests use by the time a late failure is handled."""

from __future__ import annotations

import concurrent.futures as cf
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from iotpipe.core.settings import Settings
from iotpipe.query.errors import ReaderLost
from iotpipe.query.range_scan import ScanJob
from iotpipe.query.service import SMALL_SCAN, ScanPool, WindowMetricsService


class StandInPool:
    """A process pool whose scans end when the test says."""

    def __init__(self) -> None:
        self.futures: list[cf.Future[object]] = []
        self.stopped = False

    def submit(self, *_: object) -> cf.Future[object]:
        self.futures.append(cf.Future())
        return self.futures[-1]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.stopped = True


def test_a_late_reader_failure_leaves_the_fresh_pool_alone() -> None:
    settings = Settings.from_env({"IOTPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:9",
                                  "IOTPIPE_QUERY_READERS": "1"})
    scans = ScanPool(settings, reader=None)  # type: ignore[arg-type]  # (threads unused)
    job = ScanJob((), 0, 1, time.time() + 60, 1000)
    old = StandInPool()
    scans._pool = old  # type: ignore[assignment]
    first, second = scans.submit(job, SMALL_SCAN), scans.submit(job, SMALL_SCAN)
    first.set_exception(BrokenProcessPool("a reader was killed"))
    assert old.stopped and scans._pool is None  # the next scans get fresh readers
    fresh = StandInPool()
    scans._pool = fresh  # type: ignore[assignment]
    third = scans.submit(job, SMALL_SCAN)
    second.set_exception(BrokenProcessPool("a reader was killed"))  # handled late
    assert scans._pool is fresh and not fresh.stopped
    service = WindowMetricsService.__new__(WindowMetricsService)
    service.scans = scans
    for failed in (first, second):
        with pytest.raises(ReaderLost):
            service._wait(failed, time.time() + 5)
    third.set_result({})
    assert service._wait(third, time.time() + 5) == {}


def test_a_reader_process_ends_with_the_worker_that_started_it() -> None:
    """A worker killed with SIGKILL leaves no reader process behind."""
    import os
    import signal
    import subprocess
    import sys

    from iotpipe.localstack.processes import pid_alive

    reader = ("from iotpipe.query.service import exit_with_parent; import time; "
              "exit_with_parent(0.1); time.sleep(60)")
    worker = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         f"p = subprocess.Popen([sys.executable, '-c', {reader!r}]); "
         "print(p.pid, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    child = int(worker.stdout.readline())
    time.sleep(1.5)  # (the reader imports the service module, then watches)
    assert pid_alive(child)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    deadline = time.monotonic() + 10
    while pid_alive(child):
        assert time.monotonic() < deadline, "the reader outlived its worker"
        time.sleep(0.1)
