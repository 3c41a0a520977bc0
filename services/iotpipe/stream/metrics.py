"""Prometheus gauges of the streaming app, built from the latest per-batch snapshot.

The Spark driver computes the numbers; this collector only renders the last snapshot, so a
scrape never touches Spark. Every family is always described (even before the first batch), so
dashboards and alerts can be checked against `FAMILIES` without running Spark.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# name -> (type, help, label names)
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "iotpipe_sensor_readings": ("counter", "Distinct readings counted since the stream started",
                                ("sensor",)),
    "iotpipe_sensor_value_min": ("gauge", "Smallest value since the stream started", ("sensor",)),
    "iotpipe_sensor_value_max": ("gauge", "Largest value since the stream started", ("sensor",)),
    "iotpipe_sensor_value_mean": ("gauge", "Mean value since the stream started", ("sensor",)),
    "iotpipe_sensor_window_readings": (
        "gauge", "Readings in the event-time window (window=current|closed)", ("sensor", "window")),
    "iotpipe_sensor_window_value_min": ("gauge", "Smallest value in the window",
                                        ("sensor", "window")),
    "iotpipe_sensor_window_value_max": ("gauge", "Largest value in the window",
                                        ("sensor", "window")),
    "iotpipe_sensor_window_value_mean": ("gauge", "Mean value in the window", ("sensor", "window")),
    "iotpipe_sensor_window_start_seconds": ("gauge", "Start of the window (epoch seconds)",
                                            ("sensor", "window")),
    "iotpipe_stream_late_readings": ("counter", "Readings dropped as behind the watermark",
                                     ("sensor",)),
    "iotpipe_stream_duplicate_readings": ("counter", "Repeated readings (device, seq) dropped",
                                          ("sensor",)),
    "iotpipe_stream_malformed_messages": ("counter", "Topic messages that are not valid readings",
                                          ("sensor",)),
    "iotpipe_stream_rollup_watermark_seconds": (
        "gauge", "Event time up to which the published rollup buckets are final (epoch seconds)",
        ()),
    "iotpipe_stream_input_rows_per_second": ("gauge", "Input rate of the last micro-batch", ()),
    "iotpipe_stream_processed_rows_per_second": ("gauge", "Processing rate of the last batch", ()),
    "iotpipe_stream_batch_duration_seconds": ("gauge", "Duration of the last micro-batch", ()),
    "iotpipe_stream_event_time_lag_seconds": ("gauge", "Now minus the newest event time seen", ()),
    "iotpipe_stream_last_batch_id": ("gauge", "Id of the last completed micro-batch", ()),
    "iotpipe_stream_kafka_offsets_behind": ("gauge", "Messages in Kafka not yet processed",
                                            ("topic",)),
    "iotpipe_stream_last_batch_timestamp_seconds": ("gauge", "When the last batch completed", ()),
}


@dataclass
class StreamSnapshot:
    """The numbers of one moment: family name -> {label values: value}."""

    samples: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)

    def set(self, family: str, labels: tuple[str, ...], value: float) -> None:
        if family not in FAMILIES:
            raise KeyError(f"unknown metric family {family}")
        self.samples.setdefault(family, {})[labels] = value


class StreamCollector(Collector):
    """Renders the newest snapshot; `publish` swaps it atomically."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot = StreamSnapshot()

    def publish(self, snapshot: StreamSnapshot) -> None:
        with self._lock:
            self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = self._snapshot
        for name, (kind, help_, labels) in FAMILIES.items():
            family_cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_cls(name, help_, labels=list(labels))
            for label_values, value in sorted(snapshot.samples.get(name, {}).items()):
                family.add_metric(list(label_values), value)
            yield family

    def describe(self) -> Iterator[Metric]:
        return self.collect()
