"""Fixtures for tests that talk to the real broker through the query service."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

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
