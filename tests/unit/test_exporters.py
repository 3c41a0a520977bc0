"""Every exporter's exposition passes `promtool check metrics` (names, units, help, types)."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exposition import promtool_check
from iotpipe.core.exporter import serve_metrics
from iotpipe.sensors import metrics as sensor_metrics
from iotpipe.stream.state import BatchRow, BucketStats, StreamState


def test_stream_exposition_with_every_family() -> None:
    state = StreamState(window_ms=60_000, lateness_ms=30_000)
    state.fold_batch(0, [
        BatchRow("temperature", 0, 0, BucketStats(3, 60.0, 200.0, 10.0, 30.0, False), 59_000),
        BatchRow("temperature", 60_000, 60_000, BucketStats(2, 10.0, 2.0, 4.0, 6.0, True),
                 150_000)])
    state.fold_progress(0, {"temperature": 1}, {"temperature": 7}, {"temperature": 1}, {
        "iotpipe_stream_input_rows_per_second": 5.0,
        "iotpipe_stream_processed_rows_per_second": 9.0,
        "iotpipe_stream_batch_duration_seconds": 0.4,
        "iotpipe_stream_last_batch_timestamp_seconds": 1.7e9}, {"temperature": 3},
        {"temperature": 5})
    assert (state.late, state.duplicates) == ({"temperature": 1}, {"temperature": 1})
    from iotpipe.stream.metrics import FAMILIES, StreamCollector

    collector = StreamCollector()
    collector.publish(state.snapshot(("temperature",), now_s=200.0))
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    for family, (kind, _, _) in FAMILIES.items():
        assert f"\n{family}{'_total' if kind == 'counter' else ''}" in "\n" + text, family
    promtool_check(text)


def test_sensor_exposition() -> None:
    sensor_metrics.READINGS_SENT.labels("temperature").inc(3)
    promtool_check(generate_latest(sensor_metrics.REGISTRY).decode())


def test_a_metrics_port_another_program_holds_stops_the_app_in_one_line() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            serve_metrics("sensors", "127.0.0.1", port, CollectorRegistry())
    assert str(e.value) == (f"iotpipe sensors: cannot serve /metrics on 127.0.0.1:{port}: "
                            "Address already in use")
