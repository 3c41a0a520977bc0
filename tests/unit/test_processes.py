"""stop_process: a stopped child's own children do not outlive it."""

from __future__ import annotations

import subprocess
import time

import pytest

from iotpipe.localstack import processes
from iotpipe.localstack.processes import pid_alive, stop_process, tree_pids


def test_what_a_stopped_process_started_is_stopped_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "LEFT_BEHIND_S", 0.5)
    # the shell dies on SIGTERM; its two sleeps, one deaf to SIGTERM, would be orphans
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & (trap '' TERM; sleep 301) & wait"])
    deadline = time.monotonic() + 10
    while len(tree_pids(proc.pid)) < 3:
        assert time.monotonic() < deadline, "the shell did not start its sleeps"
        time.sleep(0.05)
    started = tree_pids(proc.pid)[1:]
    assert stop_process(proc, 5) == -15  # the shell's own exit: killed by SIGTERM
    assert [p for p in started if pid_alive(p)] == []
