"""A worker connects its consumers before its first request (see KafkaWindowReader.warm_up),
on the real broker and without one (what it asks of the broker: tests/unit)."""

from __future__ import annotations

import logging

import pytest

from iotpipe.core.settings import KafkaSettings
from iotpipe.localstack.kafka_broker import free_port
from iotpipe.query.reader import SHORT, WINDOW, KafkaWindowReader
from query_dataset import Dataset


def test_warm_up_leaves_connected_consumers_and_the_partitions_known(dataset: Dataset) -> None:
    s = dataset.settings
    topics = [s.topic(sensor) for sensor in s.sensors]
    reader = KafkaWindowReader(s.kafka)
    try:
        reader.warm_up(topics, {SHORT: 2, WINDOW: 1})
        assert {f: q.qsize() for f, q in reader._idle.items()} == {SHORT: 2, WINDOW: 1}
        learnt = {t: reader._partitions[t] for t in topics}
        assert {t: parts for t, (_, parts) in learnt.items()} == {
            t: list(range(s.topic_partitions)) for t in topics}
        # what a request asks next is what the warm-up learnt, not listed again
        assert reader.partitions(topics[0]) == list(range(s.topic_partitions))
        assert reader._partitions[topics[0]] is learnt[topics[0]]
    finally:
        reader.close()


def test_warm_up_without_a_broker_gives_up_and_leaves_the_consumers(
        caplog: pytest.LogCaptureFixture) -> None:
    reader = KafkaWindowReader(KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}"))
    try:
        with caplog.at_level(logging.INFO, "iotpipe.query.reader"):
            reader.warm_up(["t1"], {SHORT: 1, WINDOW: 1})
        assert "consumers not warmed up" in caplog.text
        assert {f: q.qsize() for f, q in reader._idle.items()} == {SHORT: 1, WINDOW: 1}
        assert reader._partitions == {}
    finally:
        reader.close()
