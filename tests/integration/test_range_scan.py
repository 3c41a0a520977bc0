"""A large scan's per-partition de-duplication on the real broker: the same answer as one state
for the whole scan, with only a few partitions (and their devices) held at a time."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Message

from iotpipe.core.wire import Reading
from iotpipe.query.range_scan import PARTITIONS_AT_ONCE, PartitionRange, RangeScan, ScanJob
from iotpipe.query.reader import LARGE, KafkaWindowReader, consumer_config
from kafka_helpers import create_topics, produce, reference, settings_for, unique_prefix
from query_dataset import BASE_MS

PARTITIONS = 5
LO, HI = BASE_MS + 2_500, BASE_MS + 50_000  # the window scanned


class CountingConsumer(Consumer):
    """A consumer that remembers the most partitions it had assigned at once."""

    most = 0

    def consume(self, *args: Any, **kwargs: Any) -> list[Message]:
        self.most = max(self.most, len(self.assignment()))
        return super().consume(*args, **kwargs)


def _partition_readings(rng: random.Random, p: int) -> list[Reading]:
    """Partition p's own 40 devices, a reading each second in random order, some sent twice:
    right after the first time and a few seconds later (within the allowed lateness)."""
    sent: list[Reading] = []
    for s in range(60):
        second = [Reading(f"pressure-{p}-{d}", "pressure", 1000 + s, BASE_MS + s * 1000
                          + rng.randrange(1000), rng.choice([rng.randrange(-99, 99),
                                                             rng.uniform(-1e3, 1e3)]))
                  for d in range(40)]
        rng.shuffle(second)
        sent += second
        sent += rng.sample(second, 3)
        if s >= 5:
            sent.insert(rng.randrange(len(sent) - 100, len(sent)), rng.choice(sent[-200:-150]))
    return sent


@pytest.fixture(scope="module")
def scanned(bootstrap: str) -> tuple[Any, list[Reading], list[PartitionRange], int]:
    settings = settings_for(bootstrap, unique_prefix(), sensors="pressure")
    create_topics(settings, partitions=PARTITIONS)
    rng = random.Random(23)
    readings: list[Reading] = []
    for p in range(PARTITIONS):
        mine = _partition_readings(rng, p)
        produce(bootstrap, settings.topic("pressure"), mine, partition=p)
        readings += mine
    reader = KafkaWindowReader(settings.kafka, large=True)
    plan = reader.plan({settings.topic("pressure"): "pressure"}, LO, HI,
                       settings.allowed_lateness_ms)["pressure"]
    reader.close()
    assert isinstance(plan, list) and len(plan) == PARTITIONS
    return settings, readings, plan, settings.allowed_lateness_ms


@pytest.mark.parametrize("per_partition", [True, False])
def test_scans_count_each_reading_once_either_way(scanned: Any, per_partition: bool) -> None:
    settings, readings, plan, lateness = scanned
    lo, hi = LO, HI
    job = ScanJob(tuple(plan), lo, hi, time.time() + 30, lateness, per_partition=per_partition)
    consumer = CountingConsumer(consumer_config(settings.kafka, LARGE))
    try:
        scan = RangeScan(job)
        scan.run(consumer)
    finally:
        consumer.close()
    result = scan.results()["pressure"]
    want = reference(readings, lo, hi)
    for metric, value in want.items():
        got = result.agg.metric(metric)
        assert got == pytest.approx(value, rel=1e-9, abs=1e-9), metric
    distinct = {(r.device, r.seq) for r in readings if lo <= r.ts <= hi}
    assert result.agg.duplicates == sum(lo <= r.ts <= hi for r in readings) - len(distinct)
    assert result.agg.duplicates > 0
    devices = {hash(r.device) for r in readings if lo <= r.ts <= hi}
    if per_partition:  # one state per partition, no more than PARTITIONS_AT_ONCE at a time
        assert len(result.fingerprints) == PARTITIONS and consumer.most == PARTITIONS_AT_ONCE
        assert [len(set(d)) for d in result.fingerprints] == [40] * PARTITIONS
    else:
        assert len(result.fingerprints) == 1 and consumer.most == PARTITIONS
    assert set().union(*map(set, result.fingerprints)) == devices
