"""The streaming app survives a broker crash: afterwards its gauges equal the reference."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from iotpipe.core.wire import Reading
from iotpipe.localstack.kafka_broker import KafkaBroker, free_port
from iotpipe.localstack.processes import start_service, stop_process
from kafka_helpers import create_topics, produce, settings_for
from stream_reference import Expected, wait_counts

T0 = 1_700_000_040_000


@pytest.mark.spark
@pytest.mark.faults
def test_stream_resumes_after_broker_kill(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", port=free_port()).start()
    settings = settings_for(broker.bootstrap, sensors="pressure")
    create_topics(settings, partitions=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log = tmp_path / "stream.log"
    expected = Expected(settings.allowed_lateness_ms, settings.window_s * 1000)

    def produce_batch(start: int, n: int) -> None:
        rs = [Reading(f"p-{i % 4}", "pressure", i // 4, T0 + i * 50, 1000 + i % 37)
              for i in range(start, start + n)]
        produce(broker.bootstrap, "pressure", rs)
        expected.batch(rs)

    produce_batch(0, 800)
    stream = start_service("stream", log, {
        "IOTPIPE_KAFKA_BOOTSTRAP": broker.bootstrap, "IOTPIPE_SENSORS": "pressure",
        "IOTPIPE_STREAM_METRICS_PORT": str(port), "IOTPIPE_TRIGGER_SECONDS": "0.5",
        "IOTPIPE_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "IOTPIPE_STREAM_CONSOLE": "false"})
    try:
        wait_counts(url, {"pressure": 800}, 240, log)
        broker.kill()
        time.sleep(8)
        assert stream.poll() is None, "the stream app died with the broker"
        broker.start()
        produce_batch(800, 400)
        got = wait_counts(url, {"pressure": 1200}, 240, log)
        values = expected.values("pressure")
        assert got[("iotpipe_sensor_value_max", "pressure")] == max(values)
        assert got[("iotpipe_sensor_value_mean", "pressure")] == pytest.approx(
            sum(values) / len(values))
    finally:
        assert stop_process(stream, 60) == 0
        broker.stop()
