"""EndOffsets: concurrent requests share lookups, and never take an answer older than their
own question."""

from __future__ import annotations

import threading
import time

import pytest

from iotpipe.query.end_offsets import TP, EndOffsets


class CountingLookup:
    """Answers each partition with the number of the lookup (1, 2, ...) that served it."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.started, self.lock = delay_s, 0, threading.Lock()

    def __call__(self, partitions: list[TP]) -> dict[TP, int]:
        with self.lock:
            self.started += 1
            n = self.started
        time.sleep(self.delay_s)
        return dict.fromkeys(partitions, n)


def test_concurrent_requests_share_lookups_and_get_fresh_answers() -> None:
    lookup = CountingLookup(0.05)
    ends = EndOffsets(lookup, timeout_s=5)
    results: list[tuple[int, dict[TP, int]]] = []
    lock = threading.Lock()

    def ask(i: int) -> None:
        for _ in range(5):
            with lookup.lock:
                before = lookup.started  # lookups already started when asking
            got = ends.get([("t", i % 3), ("u", 0)])
            with lock:
                results.append((before, got))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 100
    assert all(answer > before for before, got in results for answer in got.values())
    assert lookup.started < 40  # 100 questions, far fewer broker calls


def test_a_failed_lookup_fails_every_request_waiting_for_it() -> None:
    def broken(partitions: list[TP]) -> dict[TP, int]:
        time.sleep(0.05)
        raise RuntimeError("broker gone")

    ends = EndOffsets(broken, timeout_s=5)
    errors: list[str] = []

    def ask() -> None:
        try:
            ends.get([("t", 0)])
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == ["broker gone"] * 8


def test_a_hanging_lookup_times_out_the_waiters() -> None:
    release = threading.Event()

    def hangs(partitions: list[TP]) -> dict[TP, int]:
        release.wait(10)
        return dict.fromkeys(partitions, 1)

    ends = EndOffsets(hangs, timeout_s=0.2)
    leader = threading.Thread(target=ends.get, args=([("t", 0)],))
    leader.start()
    time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        ends.get([("t", 0)])
    assert time.monotonic() - started < 3
    release.set()
    leader.join(10)


def test_an_error_of_one_partition_is_that_partitions_answer_only() -> None:
    def lookup(partitions: list[TP]) -> dict[TP, int | Exception]:
        time.sleep(0.05)  # long enough for both requests to join one lookup
        return {tp: LookupError("topic deleted") if tp[0] == "gone" else 7 for tp in partitions}

    ends = EndOffsets(lookup, timeout_s=5)
    got: dict[str, object] = {}

    def ask(topic: str) -> None:
        try:
            got[topic] = ends.get([(topic, 0)])
        except LookupError as e:
            got[topic] = str(e)

    threads = [threading.Thread(target=ask, args=(t,)) for t in ("ok", "gone")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == {"ok": {("ok", 0): 7}, "gone": "topic deleted"}
