"""The real gunicorn server (`python -m iotpipe.query`, the container command) over HTTP."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Dataset
from iotpipe.localstack.kafka_broker import free_port
from iotpipe.localstack.processes import (
    http_get,
    http_post_json,
    start_service,
    stop_pid,
    wait_healthy,
)
from iotpipe.query.timestamps import parse_ms


@pytest.fixture(scope="module")
def server(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    s = dataset.settings
    env = {"IOTPIPE_KAFKA_BOOTSTRAP": s.kafka.bootstrap, "IOTPIPE_TOPIC_PREFIX": s.topic_prefix,
           "IOTPIPE_QUERY_PORT": str(port), "IOTPIPE_QUERY_WORKERS": "2",
           "IOTPIPE_QUERY_READERS": "1", "IOTPIPE_LOG_FORMAT": "json"}
    log: Path = tmp_path_factory.mktemp("gunicorn") / "query.log"
    proc = start_service("query", log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/health", 30, proc)
        yield url
    finally:
        assert stop_pid(proc.pid, 20), "gunicorn did not stop on SIGTERM"
        assert proc.wait(5) == 0, log.read_text()[-2000:]


def test_prototype_request_over_http(server: str, dataset: Dataset) -> None:
    lo, hi = parse_ms("2020-01-13 15:12:00"), parse_ms("2020-01-13 15:13:00")
    humidity = [r.value for r in dataset.readings["humidity"] if lo <= r.ts <= hi]
    for _ in range(6):  # several requests: both workers and their reader processes answer
        status, body = http_post_json(f"{server}/compute/metrics", {
            "humidity": ["average", "max", "count"], "from": "2020-01-13 15:12:00",
            "to": "2020-01-13 15:13:00"})
        assert status == 200
        assert body == {"result": {"humidity": {"average": statistics.mean(humidity),
                                                "max": max(humidity), "count": 61}},
                        "errors": []}


def test_metrics_merge_all_workers(server: str) -> None:
    for _ in range(4):
        http_post_json(f"{server}/compute/metrics", {"from": "x", "to": "y"})
    status, text = http_get(f"{server}/metrics")
    assert status == 200
    lines = [line for line in text.decode().splitlines()
             if line.startswith('iotpipe_http_requests_total{method="POST"')
             and 'status="400"' in line]
    assert len(lines) == 1 and float(lines[0].split()[-1]) >= 4
    assert "iotpipe_http_request_duration_seconds_bucket" in text.decode()


def test_openapi_document_is_served(server: str) -> None:
    status, text = http_get(f"{server}/openapi.json")
    assert status == 200
    assert b'"openapi": "3.1.0"' in text
