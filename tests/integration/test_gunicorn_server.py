"""The real gunicorn server (`python -m iotpipe.query`, the container command) over HTTP."""

from __future__ import annotations

import concurrent.futures as cf
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from exposition import promtool_check
from iotpipe.localstack.kafka_broker import free_port
from iotpipe.localstack.processes import http_get, http_post_json, start_service, stop_process
from iotpipe.query.timestamps import parse_ms
from iotpipe.stream.metrics import StreamCollector
from query_dataset import Dataset

ROOT = Path(__file__).resolve().parents[2]
METRICS_PORT = free_port()
TOKEN = "0123456789abcdef-token"


Server = Callable[..., AbstractContextManager[str]]


@pytest.fixture(scope="module")
def server(query_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with query_server(tmp_path_factory.mktemp("gunicorn"), IOTPIPE_QUERY_WORKERS="2",
                      IOTPIPE_QUERY_METRICS_PORT=str(METRICS_PORT)) as url:
        yield url


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
    """40 requests at once, on their own connections, so that both workers take some: the
    master's count rises by exactly 40 (one worker's files alone would count fewer)."""
    def refused() -> tuple[float, str]:
        status, text = http_get(f"http://127.0.0.1:{METRICS_PORT}/metrics")
        assert status == 200
        lines = [line for line in text.decode().splitlines()
                 if line.startswith('iotpipe_http_requests_total{method="POST"')
                 and 'status="400"' in line]
        assert len(lines) <= 1
        return (float(lines[0].split()[-1]) if lines else 0.0), text.decode()

    before, _ = refused()
    with cf.ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda _: http_post_json(
            f"{server}/compute/metrics", {"from": "x", "to": "y"}, 30)[0], range(40)))
    assert answers == [400] * 40
    after, text = refused()
    assert after - before == 40
    assert "iotpipe_http_request_duration_seconds_bucket" in text
    promtool_check(text)


def helm_test(api: str, stream: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The chart's `helm test` script, run here against local services."""
    return subprocess.run(
        [sys.executable, str(ROOT / "charts/iotpipe/files/helm-test.py")],
        env={"PATH": "/usr/bin:/bin", "IOTPIPE_TEST_API": api, "IOTPIPE_TEST_SENSOR": "humidity",
             "IOTPIPE_TEST_STREAM_METRICS": stream, "IOTPIPE_TEST_PATIENCE_SECONDS": "4"} | env,
        capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def stream_exporter() -> Iterator[str]:
    """The streaming app's real exporter (no batch yet), as the stream driver serves it."""
    registry = CollectorRegistry()
    registry.register(StreamCollector())
    port = free_port()
    httpd, thread = start_http_server(port, "127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}/metrics"
    httpd.shutdown()
    thread.join(10)


def test_helm_test_script_passes_and_fails(server: str, stream_exporter: str) -> None:
    done = helm_test(server, stream_exporter)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok   ") == 3
    done = helm_test(server, f"http://127.0.0.1:{free_port()}/metrics")
    assert done.returncode == 1
    assert "FAIL stream exporter /metrics" in done.stdout and done.stdout.count("ok   ") == 2


def test_metrics_are_not_on_the_api_port(server: str) -> None:
    """The Ingress routes the API port: metrics stay off it."""
    status, _ = http_get(f"{server}/metrics")
    assert status == 404


def test_metrics_port_needs_no_token_when_the_api_does(query_server: Server,
                                                       tmp_path: Path) -> None:
    """Also: the workers run on uvloop (logged at DEBUG; gunicorn would fall back silently)."""
    (tmp_path / "token").write_text(TOKEN)
    metrics_port = free_port()
    with query_server(tmp_path, IOTPIPE_API_TOKEN_FILE=str(tmp_path / "token"),
                      IOTPIPE_QUERY_METRICS_PORT=str(metrics_port),
                      IOTPIPE_LOG_LEVEL="DEBUG") as url:
        assert "Using uvloop event loop" in (tmp_path / "query.log").read_text()
        status, _ = http_post_json(f"{url}/compute/metrics", {"from": "x", "to": "y"})
        assert status == 401
        status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        counted = r'iotpipe_http_requests_total\{[^}]*status="401"[^}]*\} 1\.0'
        assert re.search(counted, text.decode())
        assert helm_test(url, "").returncode == 1
        done = helm_test(url, "", IOTPIPE_API_TOKEN_FILE=str(tmp_path / "token"))
        assert done.returncode == 0, done.stdout


def test_openapi_document_is_served(server: str) -> None:
    status, text = http_get(f"{server}/openapi.json")
    assert status == 200
    assert b'"openapi": "3.1.0"' in text


OPENAPI = ROOT / "services/iotpipe/query/openapi.json"
# Not `negative_data_rejection` / `positive_data_acceptance`: the prototype's contract answers
# a body with unknown keys or metrics 200 (the valid rest computed, `errors` listing the rest),
# and values the schema allows (any string in `from`) may still be refused with a 400.
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance," \
         "response_schema_conformance"


def test_schemathesis_finds_no_5xx_and_only_documented_responses(server: str) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", str(OPENAPI), "--url", server,
         "--checks", CHECKS, "--max-examples", "60", "--seed", "20261125",
         "--request-timeout", "30", "--no-color"],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-5000:]
    cases = re.search(r"(\d+) generated", done.stdout)
    assert cases and int(cases[1]) >= 100, done.stdout[-3000:]


def test_a_worker_waiting_for_its_rollup_index_stops_at_once(tmp_path: Path) -> None:
    """No broker: the workers wait for their rollup index (up to 30 s) before serving. A stop
    meanwhile is handled at once, not by the master's SIGKILL after the graceful timeout."""
    log = tmp_path / "query.log"
    proc = start_service("query", log, {
        "IOTPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "IOTPIPE_KAFKA_TIMEOUT_SECONDS": "2",
        "IOTPIPE_QUERY_PORT": str(free_port()), "IOTPIPE_QUERY_METRICS_PORT": str(free_port())})
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count("rollup topic") < 2:  # both workers are waiting
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        code = stop_process(proc, 5)  # SIGTERM; SIGKILL after 5 s
    text = log.read_text()
    assert code == 0 and "SIGKILL" not in text, text[-3000:]
    assert text.count("Worker exiting") == 2, text[-3000:]
