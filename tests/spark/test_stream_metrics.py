"""The streaming app on real Kafka + real Spark: gauges equal a reference computed here."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pyspark.sql import SparkSession

from iotpipe.core.settings import Settings
from iotpipe.core.wire import Reading
from iotpipe.stream.job import start
from iotpipe.stream.runner import StreamRunner
from kafka_helpers import create_topics, produce, settings_for, unique_prefix
from stream_reference import Expected

T0 = 1_700_000_040_000  # a window boundary (1-minute windows)
GARBAGE = [b"not json", b'{"device":"d"}', b'{"device":"d","sensor":"x","seq":1,"ts":1,"value":1}']


def _run(spark: SparkSession, settings: Settings) -> StreamRunner:
    """Process everything available (availableNow), as the long-running app would."""
    runner = StreamRunner(settings)
    query = start(spark, settings, runner.store, runner.on_batch, available_now=True)
    assert query.awaitTermination(300), "the availableNow query did not finish"
    assert query.exception() is None
    operators = query.lastProgress["stateOperators"]
    assert len(operators) == len(settings.sensors)  # one de-duplication per sensor branch
    for op in operators:  # its state in RocksDB, off the driver's heap
        assert any(k.startswith("rocksdb") for k in op["customMetrics"]), op
    runner.absorb_progress(query)
    runner.publish()
    return runner


def _sample(runner: StreamRunner, name: str, **labels: str) -> float | None:
    registry = CollectorRegistry()
    registry.register(runner.collector)
    return registry.get_sample_value(name, labels)


@pytest.mark.spark
def test_gauges_equal_reference(spark: SparkSession, bootstrap: str, tmp_path: Path) -> None:
    settings = settings_for(bootstrap, unique_prefix(), checkpoint_dir=str(tmp_path / "ckpt"),
                            stream_console="false")
    create_topics(settings)
    rng = random.Random(3)
    expected = Expected(settings.allowed_lateness_ms, settings.window_s * 1000)

    def phase(readings: dict[str, list[Reading]]) -> None:
        for sensor, rs in readings.items():
            stream: list[Reading | tuple[bytes, int]] = list(rs)
            for g in GARBAGE:
                stream.insert(rng.randrange(len(stream) + 1), (g, T0))
            produce(bootstrap, settings.topic(sensor), stream)
        expected.batch([r for rs in readings.values() for r in rs])

    # phase 1: 0..150 s, 2 devices per sensor, out of order by up to 3 s, repeats
    first: dict[str, list[Reading]] = {}
    for sensor in settings.sensors:
        rs = [Reading(f"{sensor}-{d}", sensor, i, T0 + i * 500 + rng.randrange(0, 3000),
                      rng.randrange(0, 101)) for i in range(300) for d in range(2)]
        # sent again at the end: long after their time (late within the batch), or just after
        first[sensor] = (rs + rng.sample([r for r in rs if r.ts < T0 + 100_000], 20)
                         + rng.sample(rs[-10:], 5))
    phase(first)
    _run(spark, settings)
    marked = expected.max_event - settings.allowed_lateness_ms  # Spark's watermark by now
    # phase 2 (a restarted app, same checkpoint): late readings, repeats, newer readings
    second = {sensor: [Reading(f"{sensor}-0", sensor, 1000 + i, T0 + 10_000 + i * 100, 999)
                       for i in range(7)]
              + rng.sample(first[sensor][560:600], 5)  # repeats of its last readings
              + [Reading(f"{sensor}-1", sensor, 2000 + i, T0 + 150_000 + i * 700,
                         round(rng.uniform(-5, 5), 3)) for i in range(100)]
              for sensor in settings.sensors}
    phase(second)
    runner = _run(spark, settings)

    for sensor in settings.sensors:  # the test data does what it says
        assert expected.late[sensor] >= 27 and expected.duplicates[sensor] >= 5
    for sensor in settings.sensors:
        values = expected.values(sensor)
        assert _sample(runner, "iotpipe_sensor_readings_total", sensor=sensor) == len(values)
        assert _sample(runner, "iotpipe_sensor_value_min", sensor=sensor) == min(values)
        assert _sample(runner, "iotpipe_sensor_value_max", sensor=sensor) == max(values)
        assert _sample(runner, "iotpipe_sensor_value_mean", sensor=sensor) == pytest.approx(
            sum(values) / len(values))
        assert _sample(runner, "iotpipe_stream_malformed_messages_total",
                       sensor=sensor) == 2 * len(GARBAGE)
        assert _sample(runner, "iotpipe_stream_late_readings_total",
                       sensor=sensor) == expected.late[sensor]
        assert _sample(runner, "iotpipe_stream_duplicate_readings_total",
                       sensor=sensor) == expected.duplicates[sensor]
        # current: the window of the newest reading; closed: the latest one ending at or
        # before the final mark, which lies between Spark's watermark after phase 1 and
        # the newest reading less the lateness (whether Spark ran a batch without data)
        w = settings.window_s * 1000
        starts = sorted({r.ts // w * w for r in expected.seen.values() if r.sensor == sensor})
        final_max = expected.max_event - settings.allowed_lateness_ms
        closed = {max(s for s in starts if s + w <= marked)} | {
            s for s in starts if marked < s + w <= final_max}
        shown = {which: _sample(runner, "iotpipe_sensor_window_start_seconds", sensor=sensor,
                                window=which) for which in ("current", "closed")}
        assert shown["current"] == starts[-1] / 1000 and shown["closed"] in {
            s / 1000 for s in closed}, (shown, starts, closed)
        for which, start_s in shown.items():
            assert start_s is not None
            window = expected.window(sensor, int(start_s * 1000))
            for name, want in (("readings", len(window)), ("value_min", min(window)),
                               ("value_max", max(window))):
                assert _sample(runner, f"iotpipe_sensor_window_{name}", sensor=sensor,
                               window=which) == want, (which, name)
            assert _sample(runner, "iotpipe_sensor_window_value_mean", sensor=sensor,
                           window=which) == pytest.approx(sum(window) / len(window))
    exposition = generate_latest(_registry(runner)).decode()
    assert 'iotpipe_stream_kafka_offsets_behind{topic="' in exposition


def _registry(runner: StreamRunner) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(runner.collector)
    return registry
