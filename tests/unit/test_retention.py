"""The topics' retention is looked up in the background: only a service's first requests wait
for it; AdminClient replaced."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException

from iotpipe.core.settings import Settings
from iotpipe.query import retention as retention_module
from iotpipe.query.retention import Retention

SETTINGS = Settings.from_env({"IOTPIPE_SENSORS": "temperature,humidity",
                              "IOTPIPE_KAFKA_TIMEOUT_SECONDS": "1"})
TOPICS = [SETTINGS.topic(s) for s in SETTINGS.sensors]


class FakeAdmin:
    """Answers each topic's retention from `answers` (an int: ms; an exception: its error),
    after `release` is set."""

    answers: ClassVar[dict[str, int | Exception]] = {}
    release = threading.Event()
    asked = 0

    def __init__(self, config: dict) -> None:
        pass

    def describe_configs(self, resources: list, request_timeout: float) -> dict:
        FakeAdmin.asked += 1
        FakeAdmin.release.wait(5)
        futures = {}
        for r in resources:
            futures[r] = f = cf.Future()
            answer = FakeAdmin.answers.get(r.name, KafkaException(KafkaError(
                KafkaError.UNKNOWN_TOPIC_OR_PART)))
            if isinstance(answer, Exception):
                f.set_exception(answer)
            else:
                f.set_result({"retention.ms": SimpleNamespace(value=str(answer))})
        return futures


@pytest.fixture(autouse=True)
def admin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention_module, "AdminClient", FakeAdmin)
    FakeAdmin.answers, FakeAdmin.asked = {t: 60_000 for t in TOPICS}, 0
    FakeAdmin.release = threading.Event()
    FakeAdmin.release.set()


def _wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not done():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _horizon(retention: Retention, topic: str = TOPICS[0]) -> int:
    horizon = retention.horizons_ms([topic])[topic]
    assert horizon is not None
    return horizon


def test_each_topics_retention_counts_back_from_one_now() -> None:
    FakeAdmin.answers[TOPICS[1]] = 30_000
    retention = Retention(SETTINGS)
    now = int(time.time() * 1000)
    longer, shorter = retention.horizons_ms(TOPICS).values()
    assert longer is not None and shorter is not None
    assert now - 60_000 <= longer <= now - 60_000 + 1000
    assert shorter == longer + 30_000
    FakeAdmin.answers[TOPICS[1]] = -1  # kept for ever: nothing to check
    assert Retention(SETTINGS).horizons_ms(TOPICS)[TOPICS[1]] is None


def test_old_values_answer_at_once_while_a_lookup_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    retention = Retention(SETTINGS)
    assert _horizon(retention) and FakeAdmin.asked == 1
    FakeAdmin.release.clear()  # the next lookup hangs until released
    FakeAdmin.answers = dict.fromkeys(TOPICS, 10_000)
    monkeypatch.setattr(retention, "_next", 0.0)  # the values are old now
    started = time.monotonic()
    horizons = [_horizon(retention) for _ in range(3)]
    assert time.monotonic() - started < 0.5
    assert all(h < time.time() * 1000 - 59_000 for h in horizons)
    FakeAdmin.release.set()
    _wait_until(lambda: not retention._running)
    assert FakeAdmin.asked == 2  # one lookup for the three requests
    assert _horizon(retention) > time.time() * 1000 - 11_000


def test_a_topic_not_answered_keeps_its_value_and_is_asked_again_soon(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention_module, "RETRY_S", 0.2)
    retention = Retention(SETTINGS)
    horizon = _horizon(retention)
    monkeypatch.setattr(retention, "_next", 0.0)
    del FakeAdmin.answers[TOPICS[0]]  # its topic deleted
    retention.horizons_ms(TOPICS)
    _wait_until(lambda: FakeAdmin.asked == 2 and not retention._running)
    assert abs(_horizon(retention) - horizon) < 1000  # the last value known
    time.sleep(0.3)
    retention.horizons_ms(TOPICS)
    _wait_until(lambda: FakeAdmin.asked == 3)  # asked again after RETRY_S, not REFRESH_S


@pytest.mark.parametrize("parts", [1, 5000])
def test_raw_parts_before_the_horizon_get_one_note(parts: int) -> None:
    """Unreadable rollups cut a window into many raw parts: the answer says once which time
    before the horizon was read from the readings left."""
    from iotpipe.query.aggregate import WindowAggregate
    from iotpipe.query.request import MetricsRequest
    from iotpipe.query.rollups import RollupPlan
    from iotpipe.query.service import WindowMetricsService
    from iotpipe.query.timestamps import format_ms

    minute, horizon = 60_000, 10**12
    # the last part before the horizon runs past it; then one part after it
    raw = [(horizon - (parts - k) * 2 * minute, horizon - (parts - k) * 2 * minute + minute - 1)
           for k in range(1, parts)] + [(horizon - minute, horizon + minute - 1),
                                        (horizon + 2 * minute, horizon + 3 * minute - 1)]
    service = WindowMetricsService.__new__(WindowMetricsService)
    service.settings = SETTINGS
    service.retention = SimpleNamespace(  # type: ignore[assignment]
        horizons_ms=lambda topics: dict.fromkeys(topics, horizon))
    service.rollups = SimpleNamespace(  # type: ignore[assignment]
        plan=lambda sensors, lo, hi, expired: RollupPlan(raw, first=1, last=2))
    service._parts = cf.ThreadPoolExecutor(2)
    service._read = lambda sensors, lo, hi, deadline: (  # type: ignore[method-assign]
        {s: WindowAggregate() for s in sensors}, set())
    req = MetricsRequest(raw[0][0], raw[-1][1], {"temperature": ["count"]})
    try:
        assert service.compute(req, time.time()) == {"temperature": {"count": 0}}
    finally:
        service._parts.shutdown()
    span = f"{format_ms(raw[0][0])} to {format_ms(horizon - 1)}"
    said = f"{span} was" if parts == 1 else f"{parts} parts from {span} were"
    assert req.errors == [f"Readings of temperature before {format_ms(horizon)} may have passed "
                          f"its topic's retention: {said} answered from the readings left, "
                          "without rollups of that time"]


def test_each_sensor_is_cut_by_its_own_topics_retention() -> None:
    """Topics of different retention: a window reaching before one topic's horizon is widened
    to whole rollup buckets for that sensor only, and the notes say whose; another sensor's
    answer is the same whether or not that one is asked with it. Horizons before the window
    change nothing: those sensors are read together."""
    from iotpipe.core import wire
    from iotpipe.query import metrics as prom
    from iotpipe.query.aggregate import WindowAggregate
    from iotpipe.query.request import MetricsRequest
    from iotpipe.query.rollups import RollupIndex
    from iotpipe.query.service import WindowMetricsService

    day, now = 86_400_000, int(time.time() * 1000)
    index = RollupIndex(SETTINGS)  # not started: its records added here
    r = index.bucket_ms
    b0 = (now - 3 * day) // r * r
    for k in range(5):  # buckets b0 .. b0 + 4r, each sensor's k-th holding k + 1 readings
        for sensor in SETTINGS.sensors:
            index.add(wire.Bucket(sensor, b0 + k * r, k + 1, float(k + 1), 0.0, 1.0, 1.0, True))
    index.add(wire.Progress(b0, now - 60_000, r))
    # temperature's readings kept 7 days (before the window), humidity's 1 day (after it)
    horizons = {TOPICS[0]: now - 7 * day, TOPICS[1]: now - day}
    service = WindowMetricsService.__new__(WindowMetricsService)
    service.settings, service.rollups = SETTINGS, index
    service.retention = SimpleNamespace(  # type: ignore[assignment]
        horizons_ms=lambda topics: {t: horizons[t] for t in topics})
    service._parts = cf.ThreadPoolExecutor(2)
    read: list[tuple[tuple[str, ...], int, int]] = []

    def no_readings(sensors: list[str], lo: int, hi: int, deadline: float
                    ) -> tuple[dict[str, WindowAggregate], set[str]]:
        read.append((tuple(sensors), lo, hi))
        return {s: WindowAggregate() for s in sensors}, set()

    def ask(*sensors: str) -> tuple[dict[str, dict[str, object]], list[str]]:
        read.clear()
        req = MetricsRequest(lo, hi, {sensor: ["count"] for sensor in sensors})
        windows = prom.WINDOWS.labels("rollups")._value.get()
        answer = service.compute(req, time.time())
        assert prom.WINDOWS.labels("rollups")._value.get() == windows + 1  # once a request
        return answer, req.errors

    service._read = no_readings  # type: ignore[method-assign]
    lo, hi = b0 + r // 2, b0 + 4 * r + r // 2 - 1  # from half of bucket 0 to half of bucket 4
    edges = [(lo, b0 + r - 1), (b0 + 4 * r, hi)]
    try:
        assert ask("temperature") == ({"temperature": {"count": 2 + 3 + 4}}, [])
        assert read == [(("temperature",), *edge) for edge in edges]
        answer, errors = ask("temperature", "humidity")
        assert answer == {"temperature": {"count": 2 + 3 + 4},
                          "humidity": {"count": 1 + 2 + 3 + 4 + 5}}
        assert read == [(("temperature",), *edge) for edge in edges]
        assert len(errors) == 2 and all(e.startswith("Readings of humidity before ")
                                        for e in errors)
        horizons[TOPICS[1]] = now - 5 * day  # before the window too
        assert ask("temperature", "humidity") == ({"temperature": {"count": 2 + 3 + 4},
                                                   "humidity": {"count": 2 + 3 + 4}}, [])
        assert read == [(("temperature", "humidity"), *edge) for edge in edges]
    finally:
        service._parts.shutdown()
