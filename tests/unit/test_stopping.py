"""StopFlag: SIGTERM and SIGINT set it, and a wait on it ends when they do."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from iotpipe.core import stopping
from iotpipe.core.stopping import StopFlag


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_wait_in_progress(sig: signal.Signals, restore_handlers: None) -> None:
    stop = StopFlag()
    stop.set_on_signals()
    timer = threading.Timer(0.2, os.kill, (os.getpid(), sig))
    timer.start()
    try:
        assert stop.wait(60) is True  # the signal, not the 60 s, ended the wait
    finally:
        timer.cancel()
    assert stop.is_set()


def test_the_handler_running_inside_a_wait_ends_it(restore_handlers: None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Where threading.Event deadlocked: the handler runs in the main thread while that thread
    is inside wait()."""
    stop = StopFlag()
    stop.set_on_signals()
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the signal arrives during the first sleep
        sleeps.append(seconds)
        if len(sleeps) == 1:
            handler(signal.SIGTERM, None)

    monkeypatch.setattr(stopping.time, "sleep", sleep)
    assert stop.wait(60) is True
    assert len(sleeps) == 1  # the wait ended at its next check, not after 60 s


def test_a_wait_without_a_signal_times_out_unset() -> None:
    stop = StopFlag()
    assert stop.wait(0.1) is False
    assert not stop.is_set()
    stop.set()
    assert stop.wait(60) is True
