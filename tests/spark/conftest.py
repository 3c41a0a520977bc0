"""One Spark session (local[2], the official Kafka source) for every Spark test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from iotpipe.core.settings import Settings
from iotpipe.localstack.maven import spark_connector_jars
from iotpipe.stream.job import build_session


@pytest.fixture(scope="session")
def spark(bootstrap: str) -> Iterator[SparkSession]:
    session = build_session(Settings.from_env({"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap}),
                            spark_connector_jars())
    yield session
    session.stop()
