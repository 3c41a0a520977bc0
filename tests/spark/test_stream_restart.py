"""`python -m iotpipe.stream` as a process: kill -9 mid-stream, restart, exactly-once gauges."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from iotpipe.core.wire import Bucket, Reading, bucket_key
from iotpipe.localstack.kafka_broker import free_port
from iotpipe.localstack.processes import child_pids, start_service, stop_pid, stop_process
from kafka_helpers import create_topics, produce, read_rollups, settings_for, unique_prefix
from stream_reference import Expected, wait_counts

T0 = 1_700_000_040_000


@pytest.mark.spark
@pytest.mark.faults
def test_kill_9_then_restart_counts_every_reading_once(bootstrap: str, tmp_path: Path) -> None:
    prefix, port = unique_prefix(), free_port()
    settings = settings_for(bootstrap, prefix, sensors="temperature,humidity")
    create_topics(settings)
    env = {"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap, "IOTPIPE_TOPIC_PREFIX": prefix,
           "IOTPIPE_SENSORS": "temperature,humidity", "IOTPIPE_STREAM_METRICS_PORT": str(port),
           "IOTPIPE_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "IOTPIPE_TRIGGER_SECONDS": "0.5"}
    url = f"http://127.0.0.1:{port}/metrics"
    expected = Expected(settings.allowed_lateness_ms, settings.window_s * 1000)

    def produce_batch(start: int, n: int) -> None:
        batch = {s: [Reading(f"{s}-0", s, i, T0 + i * 200, (i * 7) % 101)
                     for i in range(start, start + n)] for s in settings.sensors}
        for sensor, rs in batch.items():
            produce(bootstrap, settings.topic(sensor), rs + rs[:5])  # with 5 repeats
        expected.batch([r for rs in batch.values() for r in rs + rs[:5]])

    produce_batch(0, 400)
    log = tmp_path / "stream.log"
    proc = start_service("stream", log, env)
    wait_counts(url, {s: 400 for s in settings.sensors}, 240, log)
    jvms = child_pids(proc.pid)
    produce_batch(400, 300)
    proc.send_signal(signal.SIGKILL)  # possibly in the middle of a batch
    proc.wait(10)
    for pid in jvms:  # the JVM notices its Python driver died and exits
        assert stop_pid(pid, 30)

    proc = start_service("stream", log, env)
    try:
        produce_batch(700, 200)
        got = wait_counts(url, {s: len(expected.values(s)) for s in settings.sensors}, 240, log)
        for sensor in settings.sensors:
            values = expected.values(sensor)
            assert len(values) == 900
            assert got[("iotpipe_sensor_value_max", sensor)] == max(values)
            assert got[("iotpipe_sensor_value_mean", sensor)] == pytest.approx(
                sum(values) / len(values))
        # the rollups: each bucket's latest record holds all of its readings, once
        rollups = read_rollups(settings)
        for sensor in settings.sensors:
            readings = [r for r in expected.seen.values() if r.sensor == sensor]
            for start in {r.ts // 60_000 * 60_000 for r in readings}:
                values = [r.value for r in readings if start <= r.ts < start + 60_000]
                record = rollups[bucket_key(sensor, start)]
                assert isinstance(record, Bucket)
                assert (record.count, record.minimum, record.maximum) == (
                    len(values), min(values), max(values))
                assert record.total == pytest.approx(sum(values), rel=1e-12)
    finally:
        code = stop_process(proc, 60)
    assert code == 0
    text = log.read_text()
    assert "Batch: " in text and "temperature" in text and "humidity" in text  # console table
    assert "stopped cleanly" in text
    assert os.path.exists(tmp_path / "ckpt" / "iotpipe-state.json")
