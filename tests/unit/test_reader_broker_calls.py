"""What a reader asks of the broker (warm-up, offset lookups, partition lists), librdkafka's
Consumer replaced."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace
from typing import ClassVar

import pytest
from confluent_kafka import OFFSET_END, KafkaError, KafkaException

from iotpipe.core.settings import Settings
from iotpipe.query import reader as reader_module
from iotpipe.query.errors import BrokerUnavailable
from iotpipe.query.reader import SHORT, WINDOW, KafkaWindowReader


class FakeConsumer:
    made: ClassVar[list[FakeConsumer]] = []
    fail_lookup = False
    fail_listing = False

    def __init__(self, config: dict) -> None:
        self.config, self.listed, self.looked_up = config, 0, []
        FakeConsumer.made.append(self)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> SimpleNamespace:
        self.listed += 1
        if FakeConsumer.fail_listing:  # as librdkafka, with no broker to ask within the timeout
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        part = SimpleNamespace(error=None, partitions={0: None, 1: None})
        return SimpleNamespace(topics={"t-a": part, "t-b": part, "other": part})

    def offsets_for_times(self, partitions: list, timeout: float) -> list:
        if FakeConsumer.fail_lookup:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        self.looked_up.append(sorted((tp.topic, tp.partition, tp.offset) for tp in partitions))
        return partitions

    def close(self) -> None:
        pass


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> KafkaWindowReader:
    FakeConsumer.made, FakeConsumer.fail_lookup, FakeConsumer.fail_listing = [], False, False
    monkeypatch.setattr(reader_module, "Consumer", FakeConsumer)
    return KafkaWindowReader(Settings.from_env({}).kafka)


def test_every_consumer_asks_the_leaders_of_all_partitions(reader: KafkaWindowReader) -> None:
    reader.warm_up(["t-a", "t-b"], {SHORT: 3, WINDOW: 1})
    assert {f: q.qsize() for f, q in reader._idle.items()} == {SHORT: 3, WINDOW: 1}
    assert [c.config["max.partition.fetch.bytes"] for c in FakeConsumer.made] == [
        SHORT.kib * 1024] * 3 + [WINDOW.kib * 1024]
    ends = [(t, p, OFFSET_END) for t in ("t-a", "t-b") for p in (0, 1)]
    assert [c.looked_up for c in FakeConsumer.made] == [[ends]] * 4
    assert sum(c.listed for c in FakeConsumer.made) == 1  # the topics are listed once
    assert {t: reader._partitions[t][1] for t in ("t-a", "t-b")} == {"t-a": [0, 1],
                                                                     "t-b": [0, 1]}


def test_a_failed_lookup_stops_the_warm_up_and_keeps_the_consumers(
        reader: KafkaWindowReader, caplog: pytest.LogCaptureFixture) -> None:
    FakeConsumer.fail_lookup = True
    with caplog.at_level(logging.INFO, "iotpipe.query.reader"):
        reader.warm_up(["t-a"], {SHORT: 2, WINDOW: 2})
    assert "consumers not warmed up" in caplog.text
    assert {f: q.qsize() for f, q in reader._idle.items()} == {SHORT: 2, WINDOW: 2}


def test_a_topic_not_created_yet_stops_the_warm_up(
        reader: KafkaWindowReader, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "iotpipe.query.reader"):
        reader.warm_up(["t-a", "missing"], {SHORT: 1})
    assert "consumers not warmed up" in caplog.text
    assert [c.looked_up for c in FakeConsumer.made] == [[]]
    assert reader._idle[SHORT].qsize() == 1


class MovedLeaderConsumer(FakeConsumer):
    """Answers the first `moved` lookups (of all consumers) with a leader-epoch error, as a
    broker does for a client whose metadata predates its restart: as the call's error or as
    one partition's."""

    moved = 0

    def offsets_for_times(self, partitions: list, timeout: float) -> list:
        if MovedLeaderConsumer.moved > 0:
            MovedLeaderConsumer.moved -= 1
            fenced = KafkaError(KafkaError.FENCED_LEADER_EPOCH)
            if MovedLeaderConsumer.moved % 2:
                raise KafkaException(fenced)
            return [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=-1,
                                    error=fenced if i == 0 else None)
                    for i, tp in enumerate(partitions)]
        return [SimpleNamespace(topic=tp.topic, partition=tp.partition, error=None,
                                offset=10 * tp.partition + (1 if tp.offset == 0 else 5))
                for tp in partitions]


@pytest.fixture
def moved_reader(monkeypatch: pytest.MonkeyPatch) -> KafkaWindowReader:
    monkeypatch.setattr(reader_module, "Consumer", MovedLeaderConsumer)
    return KafkaWindowReader(Settings.from_env({"IOTPIPE_KAFKA_TIMEOUT_SECONDS": "2"}).kafka)


@pytest.mark.parametrize("closed", [True, False])
def test_lookups_are_asked_again_after_a_leader_moved(moved_reader: KafkaWindowReader,
                                                     closed: bool) -> None:
    MovedLeaderConsumer.moved = 4
    to_ms = 1_000 if closed else 10**14  # closed: ends by time (from 0: starts by time 0)
    plans = moved_reader.plan({"t-a": "a"}, 0, to_ms, 0)
    assert MovedLeaderConsumer.moved == 0
    assert [(r.partition, r.start, r.end) for r in plans["a"]] == [(0, 1, 5), (1, 11, 15)]


def test_a_leader_not_found_again_is_a_broker_error_within_the_timeout(
        moved_reader: KafkaWindowReader) -> None:
    MovedLeaderConsumer.moved = 10**6
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="leader moved"):
        moved_reader.plan({"t-a": "a"}, 0, 1_000, 0)
    assert 1.5 < time.monotonic() - started < 2.5


def test_a_known_partition_list_is_kept_while_the_broker_cannot_list_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    FakeConsumer.made, FakeConsumer.fail_listing = [], False
    monkeypatch.setattr(reader_module, "Consumer", FakeConsumer)
    clock = [1000.0]
    monkeypatch.setattr(reader_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    reader = KafkaWindowReader(Settings.from_env({}).kafka, kept_s=300)

    def listings() -> int:
        return sum(c.listed for c in FakeConsumer.made)

    assert reader.partitions("t-a") == [0, 1] and listings() == 1
    clock[0] += 250
    assert reader.partitions("t-b") == [0, 1] and listings() == 2  # (t-a: 250 s old now)
    FakeConsumer.fail_listing = True
    clock[0] += reader_module.PARTITIONS_MAX_AGE_S  # due to be listed again: that fails
    assert reader.partitions("t-b") == [0, 1] and listings() == 3
    clock[0] += 1  # nor is another topic listed again (a wait for the timeout) for a while
    assert reader.partitions("t-a") == [0, 1] and listings() == 3
    with pytest.raises(BrokerUnavailable):  # never listed: nothing to keep
        reader.partitions("other")
    clock[0] += 20  # t-a's list is older than anything the window cache can hold: not used
    with pytest.raises(BrokerUnavailable):
        reader.partitions("t-a")
    assert reader.partitions("t-b") == [0, 1]  # t-b's still is
    FakeConsumer.fail_listing = False
    assert reader.partitions("t-a") == [0, 1]
