"""Fixtures for tests that talk to the real broker through the query service."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from iotpipe.localstack.kafka_broker import free_port
from iotpipe.localstack.processes import start_service, stop_process, wait_healthy
from iotpipe.query.app import create_app
from query_dataset import Dataset, load_dataset


@pytest.fixture(scope="session")
def dataset(bootstrap: str) -> Dataset:
    return load_dataset(bootstrap)


@pytest.fixture(scope="session")
def client(dataset: Dataset) -> Iterator[FlaskClient]:
    app = create_app(dataset.settings)
    yield app.test_client()
    app.extensions["iotpipe.service"].close()


@pytest.fixture(scope="session")
def query_server(dataset: Dataset) -> Callable[..., contextlib.AbstractContextManager[str]]:
    """`with query_server(log_dir, **env) as url:` the real gunicorn server on the dataset."""
    return functools.partial(_query_server, dataset)


@contextlib.contextmanager
def _query_server(dataset: Dataset, log_dir: Path, **env: str) -> Iterator[str]:
    port = free_port()
    s = dataset.settings
    env = {"IOTPIPE_KAFKA_BOOTSTRAP": s.kafka.bootstrap, "IOTPIPE_TOPIC_PREFIX": s.topic_prefix,
           "IOTPIPE_QUERY_PORT": str(port), "IOTPIPE_QUERY_METRICS_PORT": str(free_port()),
           "IOTPIPE_QUERY_READERS": "1", "IOTPIPE_LOG_FORMAT": "json"} | env
    log = log_dir / "query.log"
    proc = start_service("query", log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/health", 30, proc)
        yield url
    finally:
        assert stop_process(proc, 20) == 0, log.read_text()[-2000:]
