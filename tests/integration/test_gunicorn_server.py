"""The real gunicorn server (`python -m iotpipe.query`, the container command) over HTTP."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from exposition import promtool_check
from iotpipe.localstack.processes import http_get, http_post_json
from iotpipe.query.timestamps import parse_ms
from query_dataset import Dataset


@pytest.fixture(scope="module")
def server(query_server: Callable[..., AbstractContextManager[str]],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with query_server(tmp_path_factory.mktemp("gunicorn"), IOTPIPE_QUERY_WORKERS="2") as url:
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
    for _ in range(4):
        http_post_json(f"{server}/compute/metrics", {"from": "x", "to": "y"})
    status, text = http_get(f"{server}/metrics")
    assert status == 200
    lines = [line for line in text.decode().splitlines()
             if line.startswith('iotpipe_http_requests_total{method="POST"')
             and 'status="400"' in line]
    assert len(lines) == 1 and float(lines[0].split()[-1]) >= 4
    assert "iotpipe_http_request_duration_seconds_bucket" in text.decode()
    promtool_check(text.decode())


def test_openapi_document_is_served(server: str) -> None:
    status, text = http_get(f"{server}/openapi.json")
    assert status == 200
    assert b'"openapi": "3.1.0"' in text


OPENAPI = Path(__file__).resolve().parents[2] / "services/iotpipe/query/openapi.json"
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
