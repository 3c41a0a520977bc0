"""The lookup plan of a request, against a reader whose broker calls are replaced: a topic
deleted since its partitions were listed, an end-offset lookup that times out or fails, start
and end offsets asked at once, and offsets the window cache knows."""

from __future__ import annotations

import threading
from typing import cast

import pytest

from iotpipe.core.settings import Settings
from iotpipe.query import reader as reader_module
from iotpipe.query.errors import BrokerUnavailable, UnknownTopic
from iotpipe.query.range_scan import PartitionRange, ScanJob
from iotpipe.query.reader import KafkaWindowReader
from iotpipe.query.window_cache import Bounds, WindowCache

TOPICS = {"t-a": "a", "t-b": "b"}


class FakeBroker:
    """Partitions and offsets of two topics; "t-b" can be deleted."""

    def __init__(self) -> None:
        self.deleted = False

    def partitions(self, topic: str) -> list[int]:
        if topic == "t-b" and self.deleted:
            raise UnknownTopic(topic)
        return [0, 1]

    def offsets_at(self, partitions: list[tuple[str, int]], ts_ms: int) -> dict:
        if self.deleted and any(t == "t-b" for t, _ in partitions):
            raise UnknownTopic("t-b")
        return {tp: (10 if ts_ms < 1000 else 20) for tp in partitions}


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> tuple[KafkaWindowReader, FakeBroker]:
    broker = FakeBroker()
    r = KafkaWindowReader(Settings.from_env({}).kafka)
    listed: dict[str, list[int]] = {}

    def partitions(topic: str) -> list[int]:
        if topic not in r._partitions:  # listed once, kept until cleared
            listed[topic] = broker.partitions(topic)
            r._partitions[topic] = (0.0, listed[topic])
        return r._partitions[topic][1]

    monkeypatch.setattr(r, "partitions", partitions)
    monkeypatch.setattr(r, "_offsets_at", broker.offsets_at)
    return r, broker


def test_plan_covers_every_partition(reader: tuple[KafkaWindowReader, FakeBroker]) -> None:
    r, _ = reader
    plans = r.plan(TOPICS, 500, 1500, 100)
    assert {s: [(p.partition, p.start, p.end) for p in ps] for s, ps in plans.items()} == {
        "a": [(0, 10, 20), (1, 10, 20)], "b": [(0, 10, 20), (1, 10, 20)]}


def test_topic_deleted_since_listed_fails_only_its_sensor(
        reader: tuple[KafkaWindowReader, FakeBroker]) -> None:
    r, broker = reader
    r.plan(TOPICS, 500, 1500, 100)  # lists both topics
    broker.deleted = True
    plans = r.plan(TOPICS, 500, 1500, 100)
    assert "b" not in plans
    assert [(p.start, p.end) for p in plans["a"]] == [(10, 20), (10, 20)]


def test_end_offset_timeout_is_broker_unavailable(
        reader: tuple[KafkaWindowReader, FakeBroker], monkeypatch: pytest.MonkeyPatch) -> None:
    r, _ = reader

    def never(partitions: object) -> dict:
        raise TimeoutError("end offset lookup did not finish")

    monkeypatch.setattr(r._ends, "get", never)
    with pytest.raises(BrokerUnavailable):
        r.plan(TOPICS, 500, 10**15, 100)  # still open: its ends are the partitions' ends


@pytest.mark.parametrize("large,lengths,want", [
    (False, [300, 1000, 12], reader_module.SHORT),  # ranges within one consume() batch
    (False, [300, 1001], reader_module.WINDOW),
    (False, [50_000], reader_module.WINDOW),  # the largest kind a worker's threads have
    (True, [300, 10_000], reader_module.MEDIUM),  # reader processes fetch more
    (True, [300, 10_001], reader_module.LARGE),
])
def test_scans_fetch_in_sizes_matched_to_their_longest_range(
        large: bool, lengths: list[int], want: reader_module.Fetch) -> None:
    r = KafkaWindowReader(Settings.from_env({}).kafka, large=large)
    ranges = tuple(PartitionRange("t", "s", p, 100, 100 + n) for p, n in enumerate(lengths))
    job = ScanJob(ranges, 0, 1, 0.0, 0)
    assert r._fetch_for(job) == want
    config = reader_module.consumer_config(Settings.from_env({}).kafka, want)
    assert config["max.partition.fetch.bytes"] == want.kib * 1024
    assert config["queued.min.messages"] == want.queued_messages


class StartsAndEnds:
    """Offsets per partition: its start for `from`, its end for the stop (-1: none stamped that
    late); both lookups must be asked at the same time, or they wait for each other in vain."""

    def __init__(self, starts: dict, ends: dict) -> None:
        self.starts, self.ends, self.asked = starts, ends, []
        self.together = threading.Barrier(2, timeout=5)

    def offsets_at(self, partitions: list[tuple[str, int]], ts_ms: int) -> dict:
        self.asked.append((ts_ms, sorted(partitions)))
        self.together.wait()
        table = self.starts if ts_ms == 500 else self.ends
        return {tp: table[tp] for tp in partitions}


def _ranges(plans: dict) -> dict:
    return {s: [(p.partition, p.start, p.end, p.end_stamp) for p in ps] for s, ps in plans.items()}


def test_a_closed_window_asks_starts_and_ends_at_once_and_keeps_only_live_partitions(
        reader: tuple[KafkaWindowReader, FakeBroker], monkeypatch: pytest.MonkeyPatch) -> None:
    r, _ = reader
    parts = [(t, p) for t in TOPICS for p in (0, 1)]
    # t-a/1 holds nothing from `from` on; t-b/1 nothing from the stop on (read to its end)
    broker = StartsAndEnds(dict(zip(parts, [10, -1, 30, 40], strict=True)),
                           dict(zip(parts, [20, 25, 35, -1], strict=True)))
    monkeypatch.setattr(r, "_offsets_at", broker.offsets_at)
    monkeypatch.setattr(r._ends, "get", lambda tps: dict.fromkeys(tps, 50))
    plans = r.plan(TOPICS, 500, 1400, 100)
    assert _ranges(plans) == {"a": [(0, 10, 20, 1501)],
                              "b": [(0, 30, 35, 1501), (1, 40, 50, None)]}
    assert sorted(broker.asked) == [(500, parts), (1501, parts)]


class KnownBounds:
    """A window cache that knows t-a/0 wholly and the start of t-b/0."""

    def bounds(self, topic: str, partition: int, from_ms: int, stop_ms: int | None
               ) -> Bounds | None:
        return {("t-a", 0): Bounds(11, 21), ("t-b", 0): Bounds(31, None)}.get((topic, partition))


def test_offsets_the_cache_knows_are_not_asked(
        reader: tuple[KafkaWindowReader, FakeBroker], monkeypatch: pytest.MonkeyPatch) -> None:
    r, _ = reader
    others = [("t-a", 1), ("t-b", 1)]
    broker = StartsAndEnds(dict.fromkeys(others, 40), dict.fromkeys([*others, ("t-b", 0)], 45))
    monkeypatch.setattr(r, "_offsets_at", broker.offsets_at)
    plans = r.plan(TOPICS, 500, 1400, 100, cast(WindowCache, KnownBounds()))
    assert _ranges(plans) == {"a": [(0, 11, 21, 1501), (1, 40, 45, 1501)],
                              "b": [(0, 31, 45, 1501), (1, 40, 45, 1501)]}
    assert sorted(broker.asked) == [(500, others), (1501, [("t-a", 1), ("t-b", 0), ("t-b", 1)])]


def test_a_failed_end_lookup_fails_the_plan_like_a_failed_start_lookup(
        reader: tuple[KafkaWindowReader, FakeBroker], monkeypatch: pytest.MonkeyPatch) -> None:
    r, _ = reader

    def offsets_at(partitions: list[tuple[str, int]], ts_ms: int) -> dict:
        if ts_ms > 500:
            raise BrokerUnavailable("looking up offsets: broker down")
        return dict.fromkeys(partitions, 10)

    monkeypatch.setattr(r, "_offsets_at", offsets_at)
    with pytest.raises(BrokerUnavailable, match="broker down"):
        r.plan(TOPICS, 500, 1400, 100)
