"""Session fixtures: one real Kafka broker for the whole run (started by the project's launcher)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from iotpipe.localstack.kafka_broker import KafkaBroker, free_port

# no per-example deadline: on a shared 2-core machine a slow example is load, not a defect
settings.register_profile("iotpipe", deadline=None)
settings.load_profile("iotpipe")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    data: Path = tmp_path_factory.mktemp("kafka")
    kafka = KafkaBroker(data, port=free_port()).start()
    yield kafka
    kafka.stop()


@pytest.fixture(scope="session")
def bootstrap(broker: KafkaBroker) -> str:
    return broker.bootstrap
