"""The simulator's own bookkeeping, against a stand-in producer: seqs across a restart, and
held-back readings through a full queue. (Sending to a real broker: the integration tests.)"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError

from iotpipe.core.stopping import StopFlag
from iotpipe.sensors import fleet as fleet_module
from iotpipe.sensors.__main__ import EMIT_MAX, run
from iotpipe.sensors.fleet import SensorFleet
from kafka_helpers import settings_for

RATE_HZ = 20  # 50 ms a round: a seq's time (seq / rate) is a whole millisecond


class _Producer:
    """Keeps what it is given; `full` produce() calls raise BufferError first."""

    sent: ClassVar[list[tuple[int, int]]] = []  # (seq, Kafka timestamp ms), every fleet
    full = 0
    outage = False

    def __init__(self, config: dict[str, Any]) -> None:
        self.error_cb = config["error_cb"]

    def produce(self, topic: str, value: bytes, key: bytes, timestamp: int) -> None:
        if _Producer.full:
            _Producer.full -= 1
            raise BufferError("Local: Queue full")
        _Producer.sent.append((json.loads(value)["seq"], timestamp))

    def poll(self, timeout: float = 0) -> int:
        if _Producer.full:
            time.sleep(min(timeout, 0.001))
        if _Producer.outage:  # as librdkafka says it: from poll()
            self.error_cb(KafkaError(KafkaError._TRANSPORT))
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> type[_Producer]:
    _Producer.sent, _Producer.full, _Producer.outage = [], 0, False
    monkeypatch.setattr(fleet_module, "Producer", _Producer)
    return _Producer


def test_a_simulator_restarted_at_once_never_sends_a_seq_again(
        producer: type[_Producer]) -> None:
    """Each seq is sent at or after its time (seq / rate), so the next process, whose first
    seq is the one after now x rate, starts above all of them (the README: never reuse one)."""
    settings = settings_for("127.0.0.1:9", sensors="temperature",
                            sensor_rate_hz=str(RATE_HZ), devices_per_sensor="1")
    for _ in range(3):  # stopped after 2-3 rounds, started again at once
        stop = StopFlag()
        threading.Timer(0.12, stop.set).start()
        assert run(settings, stop) == 0
    seqs = [seq for seq, _ in producer.sent]
    assert len(seqs) >= 6 and len(set(seqs)) == len(seqs), seqs
    for seq, stamp in producer.sent:
        assert seq * 1000 <= stamp * RATE_HZ, f"seq {seq} sent at {stamp} ms, before its time"


def test_a_held_back_reading_waits_for_room_in_the_queue(producer: type[_Producer]) -> None:
    settings = settings_for("127.0.0.1:9", sensors="temperature", devices_per_sensor="2",
                            late_rate="1", late_delay_seconds="0")
    fleet = SensorFleet(settings, seed=1, first_seq=10)
    fleet.emit(2, now_ms=1_000)  # both held back
    producer.full = 3
    fleet.release_late(force=True)
    assert sorted(producer.sent) == [(10, 1_000), (10, 1_000)]
    assert fleet.produced == {settings.topic("temperature"): 2}


def test_stopping_while_the_broker_is_away_gives_up_on_a_reading_without_room(
        producer: type[_Producer], caplog: pytest.LogCaptureFixture) -> None:
    """Room would come only as buffered readings expire (IOTPIPE_PRODUCER_BUFFER_SECONDS): a
    stop must not wait for it. The reading is counted and logged as given up."""
    settings = settings_for("127.0.0.1:9", sensors="temperature", devices_per_sensor="2")
    stopping = [False]
    fleet = SensorFleet(settings, seed=1, first_seq=10, stopping=lambda: stopping[0])
    fleet._error(KafkaError(KafkaError._TRANSPORT))
    producer.full = 10**9
    stopping[0] = True
    fleet.emit(2, now_ms=1_000)
    topic = settings.topic("temperature")
    assert producer.sent == [] and fleet.failed == {topic: 2} and fleet.produced == {topic: 2}
    assert fleet.acknowledged() == {topic: 0} and fleet.close(timeout_s=0) == 2
    assert caplog.text.count("reading not sent, given up") == 2


def test_stopping_while_the_broker_is_up_waits_for_room_a_while(
        producer: type[_Producer], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for("127.0.0.1:9", sensors="temperature", devices_per_sensor="2")
    fleet = SensorFleet(settings, seed=1, first_seq=10, stopping=lambda: True)
    producer.full = 3
    fleet.emit(2, now_ms=1_000)
    assert sorted(producer.sent) == [(10, 1_000), (10, 1_000)] and not fleet.failed
    # a broker that takes no writes and reports no error: the stop waits STOP_ROOM_S in all
    monkeypatch.setattr(fleet_module, "STOP_ROOM_S", 0.3)
    fleet = SensorFleet(settings, seed=1, first_seq=10, stopping=lambda: True)
    producer.full = 10**9
    t = time.monotonic()
    fleet.emit(2, now_ms=2_000)
    assert 0.3 <= time.monotonic() - t < 5 and fleet.failed == {settings.topic("temperature"): 2}


def test_a_stop_looks_whether_the_broker_is_back_before_giving_up(
        producer: type[_Producer], monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker was away, and readings are being acknowledged again: a reading finding the
    queue full at the stop waits for room rather than being given up."""
    settings = settings_for("127.0.0.1:9", sensors="temperature", devices_per_sensor="10")
    fleet = SensorFleet(settings, seed=1, first_seq=10, stopping=lambda: True)
    queued = [10]
    monkeypatch.setattr(_Producer, "__len__", lambda self: queued[0])
    fleet.emit(10, now_ms=1_000)
    fleet.publish_metrics()  # 10 queued, none acknowledged
    fleet._error(KafkaError(KafkaError._TRANSPORT))
    queued[0], producer.full = 4, 3  # 6 acknowledged since; the queue is full for a while
    fleet.emit(1, now_ms=2_000)
    assert fleet.broker_up and not fleet.failed and len(producer.sent) == 11


def test_a_stop_during_an_outage_ends_the_run_at_once(producer: type[_Producer]) -> None:
    """The run looks at the stop flag between small batches of readings, and its fleet gives
    up on those without room while the broker is away."""
    settings = settings_for("127.0.0.1:9", sensors="temperature", devices_per_sensor="3",
                            sensor_rate_hz=str(RATE_HZ))
    producer.full, producer.outage = 10**9, True
    stop, left = StopFlag(), []
    runner = threading.Thread(target=lambda: left.append(run(settings, stop)), daemon=True)
    runner.start()
    try:
        time.sleep(0.3)
        stop.set()
        runner.join(timeout=10)
        assert not runner.is_alive(), "run() went on after the stop"
    finally:
        producer.full = 0  # (a run still going ends)
    assert producer.sent == [] and len(left) == 1 and left[0] >= 1


def test_a_stop_after_a_stall_ends_the_run_within_emit_max_readings(
        producer: type[_Producer], monkeypatch: pytest.MonkeyPatch) -> None:
    """A stall makes many readings due at once: the run makes them in batches of at most
    EMIT_MAX, looking at the stop flag between two."""
    stop, after_stop = StopFlag(), []

    class Stalled(_Producer):
        room_at: float | None = None  # the first reading starts a stall of 1 s

        def produce(self, topic: str, value: bytes, key: bytes, timestamp: int) -> None:
            Stalled.room_at = Stalled.room_at or time.monotonic() + 1.0
            if time.monotonic() < Stalled.room_at:
                raise BufferError("Local: Queue full")
            after_stop.append(stop.is_set())
            if len(after_stop) == 10:
                stop.set()

        def poll(self, timeout: float = 0) -> int:
            time.sleep(min(timeout, 0.001))
            return 0

    monkeypatch.setattr(fleet_module, "Producer", Stalled)
    settings = settings_for("127.0.0.1:9", sensors="temperature", devices_per_sensor="3",
                            sensor_rate_hz="2000")
    assert run(settings, stop) == 0
    # the stall made about 6,000 readings due (3 devices x 2,000/s x 1 s)
    assert 0 < after_stop.count(True) <= EMIT_MAX < 3_000


def test_the_broker_is_up_again_once_readings_are_acknowledged(
        producer: type[_Producer], monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy fleet's queue is never empty: readings acknowledged since the last look say the
    broker is back (the dashboard's gauge stayed at 0)."""
    settings = settings_for("127.0.0.1:9", sensors="temperature", devices_per_sensor="10")
    fleet = SensorFleet(settings, seed=1, first_seq=10)
    queued = [10]
    monkeypatch.setattr(_Producer, "__len__", lambda self: queued[0])
    fleet.emit(10, now_ms=1_000)
    fleet.publish_metrics()
    fleet._error(KafkaError(KafkaError._TRANSPORT))
    fleet.emit(10, now_ms=2_000)
    queued[0] = 20  # nothing acknowledged
    fleet.publish_metrics()
    assert fleet.broker_up is False
    fleet.emit(10, now_ms=3_000)
    queued[0] = 12  # 18 acknowledged, 12 queued
    fleet.publish_metrics()
    assert fleet.broker_up is True
