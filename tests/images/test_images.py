"""The three images, built from the repository's Dockerfiles and run as the chart runs them
(non-root, read-only root with the chart's writable mounts, the chart's env) against the
session's real broker; each container's results are checked against a reference computed here."""

from __future__ import annotations

import json
import os
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from containers import ChartContainer, Container

from images import Engine
from iotpipe.core import wire
from iotpipe.core.wire import Reading
from iotpipe.localstack.kafka_broker import free_port
from iotpipe.localstack.processes import http_get
from iotpipe.localstack.status import scrape
from iotpipe.query.timestamps import parse_ms
from k8s.k8s_support import Rendering
from kafka_helpers import create_topics, produce, settings_for, unique_prefix
from query_dataset import load_dataset
from stream_reference import Expected, wait_counts

pytestmark = [pytest.mark.integration, pytest.mark.images]
WINDOW = ("2020-01-13 15:12:00", "2020-01-13 15:13:00")
README_BODY = json.dumps({"temperature": ["count", "min"], "humidity": ["average", "max"],
                          "from": WINDOW[0], "to": WINDOW[1]})  # the prototype README's example


def _wait(what: str, ready: Callable[[], bool], container: Container, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert container.running(), f"{container.name} exited:\n{container.text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not in {timeout_s:.0f} s:\n" \
                                            f"{container.text()[-3000:]}"
        time.sleep(1)


def _answers(url: str) -> bool:
    try:
        return http_get(url, 2.0)[0] == 200
    except OSError:
        return False


def _stopped_cleanly(container: Container) -> None:
    """After `container.stop()` in the test's `finally` (asserted only if the test got there)."""
    code = container.exit_code
    assert code == 0, f"{container.name} exited {code}:\n{container.text()[-3000:]}"
    assert container.error_lines() == []


def test_query_image_answers_the_readme_example(
        engine: Engine, image: Callable[[str], str], chart: Rendering, bootstrap: str,
        tmp_path: Path) -> None:
    spec = ChartContainer.deployment(chart, "iotpipe-query")
    assert spec.image == image("query")
    dataset = load_dataset(bootstrap)
    port = free_port()
    container = Container(engine, spec, "iotpipe-test-query", {
        "IOTPIPE_KAFKA_BOOTSTRAP": bootstrap,
        "IOTPIPE_TOPIC_PREFIX": dataset.settings.topic_prefix,
        "IOTPIPE_QUERY_PORT": str(port)}, tmp_path / "query.log")
    try:
        _wait("/health", lambda: _answers(f"http://127.0.0.1:{port}/health"), container, 120)
        status, body = _post(f"http://127.0.0.1:{port}/compute/metrics", README_BODY)
        lo, hi = (parse_ms(t) for t in WINDOW)
        window = {s: [r.value for r in rs if lo <= r.ts <= hi]
                  for s, rs in dataset.readings.items()}
        assert status == 200
        assert body == json.dumps({"result": {
            "temperature": {"count": 61, "min": min(window["temperature"])},
            "humidity": {"average": statistics.mean(window["humidity"]),
                         "max": max(window["humidity"])}}, "errors": []})
        status, body = _post(f"http://127.0.0.1:{port}/compute/metrics", README_BODY[:-1] + ",}")
        assert status == 400 and "Request body is not valid JSON" in body
    finally:
        container.stop()
    _stopped_cleanly(container)


def _post(url: str, body: str) -> tuple[int, str]:
    req = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_sensors_image_readings_reach_kafka(
        engine: Engine, image: Callable[[str], str], chart: Rendering, bootstrap: str,
        tmp_path: Path) -> None:
    spec = ChartContainer.deployment(chart, "iotpipe-sensor-temperature")
    assert spec.image == image("sensors")
    settings = settings_for(bootstrap, unique_prefix(), sensors="temperature")
    create_topics(settings)
    port = free_port()
    container = Container(engine, spec, "iotpipe-test-sensors", {
        "IOTPIPE_KAFKA_BOOTSTRAP": bootstrap, "IOTPIPE_TOPIC_PREFIX": settings.topic_prefix,
        "IOTPIPE_SENSORS_METRICS_PORT": str(port)}, tmp_path / "sensors.log")
    devices = int(_env(spec, "IOTPIPE_DEVICES_PER_SENSOR"))
    try:
        readings = _consume(bootstrap, settings.topic("temperature"), 3 * devices, 120)
        assert {r.sensor for r in readings} == {"temperature"}
        assert len({r.device for r in readings}) == devices
        assert all(5 <= r.value <= 31 for r in readings)  # the daily model: 18 +- 7, noise
        _wait("its counter of acknowledged readings", lambda: scrape(
            f"http://127.0.0.1:{port}/metrics").get(
                ("iotpipe_sensor_readings_sent_total", "temperature"), 0) >= len(readings),
              container, 60)
    finally:
        container.stop()
    _stopped_cleanly(container)


def _env(spec: ChartContainer, key: str) -> str:
    (value,) = [e["value"] for e in spec.container["env"] if e["name"] == key]
    return value


def _consume(bootstrap: str, topic: str, count: int, timeout_s: float) -> list[Reading]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"images-{topic}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    readings: list[Reading] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(readings) < count and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                readings.append(wire.decode(msg.value()))
    finally:
        consumer.close()
    assert len(readings) >= count, f"{len(readings)} readings in {timeout_s:.0f} s, want {count}"
    return readings


def test_stream_image_exports_the_counts(
        engine: Engine, image: Callable[[str], str], chart: Rendering, bootstrap: str,
        tmp_path: Path) -> None:
    spec = ChartContainer.spark_driver(chart, "iotpipe-stream", "local[1]")
    assert spec.image == image("stream")
    settings = settings_for(bootstrap, unique_prefix())
    create_topics(settings)
    expected = Expected(settings.allowed_lateness_ms, settings.window_s * 1000)
    t0 = 1_700_000_040_000
    readings = {s: [Reading(f"{s}-{i % 3}", s, i, t0 + i * 1000, (i * 7) % 50) for i in range(60)]
                for s in settings.sensors}
    for sensor, rs in readings.items():
        produce(bootstrap, settings.topic(sensor), [*rs, rs[-1], (b"not json", t0)])
    expected.batch([r for rs in readings.values() for r in [*rs, rs[-1]]])  # the newest: not late
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    os.chown(checkpoints, int(spec.pod_security["runAsUser"]), int(spec.pod_security["fsGroup"]))
    port = free_port()
    container = Container(engine, spec, "iotpipe-test-stream", {
        "IOTPIPE_KAFKA_BOOTSTRAP": bootstrap, "IOTPIPE_TOPIC_PREFIX": settings.topic_prefix,
        "IOTPIPE_STREAM_METRICS_PORT": str(port), "SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1"},
        tmp_path / "stream.log", {"checkpoint": checkpoints})
    try:
        got = wait_counts(f"http://127.0.0.1:{port}/metrics",
                          {s: len(expected.values(s)) for s in settings.sensors}, 300,
                          container.log)
        for sensor in settings.sensors:
            assert got[("iotpipe_sensor_value_max", sensor)] == max(expected.values(sensor))
        assert expected.duplicates == dict.fromkeys(settings.sensors, 1)  # (the test data)
        url = f"http://127.0.0.1:{port}/metrics"
        _wait("one malformed message and one repeat per sensor", lambda: all(
            scrape(url).get(("iotpipe_stream_malformed_messages_total", s)) == 1
            and scrape(url).get(("iotpipe_stream_duplicate_readings_total", s))
            == expected.duplicates[s] for s in settings.sensors), container, 120)
        assert container.error_lines() == []
    finally:
        container.stop()
    _stopped_cleanly(container)  # SIGTERM reached the Python app, which stopped Spark cleanly
