"""Test helpers: produce known readings (and garbage) to the real broker, compute references."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator

from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from iotpipe.core import wire
from iotpipe.core.settings import Settings
from iotpipe.localstack.topics import rollup_topic_config

_prefixes = itertools.count()


def unique_prefix() -> str:
    return f"t{next(_prefixes)}-"


def settings_for(bootstrap: str, prefix: str = "", **env: str) -> Settings:
    base = {"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap, "IOTPIPE_TOPIC_PREFIX": prefix,
            "IOTPIPE_KAFKA_TIMEOUT_SECONDS": "3", "IOTPIPE_QUERY_DEADLINE_SECONDS": "20"}
    return Settings.from_env(base | {f"IOTPIPE_{k.upper()}": v for k, v in env.items()})


def create_topics(settings: Settings, partitions: int | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    n = partitions or settings.topic_partitions
    # retention off: the readings are stamped years ago and would be deleted within a minute
    topics = [NewTopic(settings.topic(s), n, 1, config={"retention.ms": "-1"})
              for s in settings.sensors]
    topics.append(NewTopic(settings.rollup_topic, 1, 1,
                           config=rollup_topic_config(settings) | {"retention.ms": "-1"}))
    futures = admin.create_topics(topics)
    for f in futures.values():
        f.result(30)


def produce(bootstrap: str, topic: str, readings: Iterable[wire.Reading | tuple[bytes, int]],
            partition: int | None = None) -> None:
    """Write readings in order; a (raw bytes, ts) tuple is written as-is (malformed input)."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for item in readings:
        if isinstance(item, wire.Reading):
            value, key, ts = wire.encode(item), wire.key(item), item.ts
        else:
            value, ts = item
            key = b"garbage"
        kwargs = {"partition": partition} if partition is not None else {}
        p.produce(topic, value, key, timestamp=ts, **kwargs)
    assert p.flush(30) == 0


def reference(readings: Iterable[wire.Reading], from_ms: int, to_ms: int) -> dict[str, object]:
    """Metrics computed the plain way: distinct (device, seq) in [from, to], then statistics."""
    distinct: dict[tuple[str, int], int | float] = {}
    for r in readings:
        if from_ms <= r.ts <= to_ms:
            distinct.setdefault((r.device, r.seq), r.value)
    values = list(distinct.values())
    if not values:
        return {"count": 0, "min": None, "max": None, "average": None, "sum": None,
                "stddev": None}
    n = len(values)
    mean = sum(values) / n
    return {"count": n, "min": min(values), "max": max(values), "average": mean,
            "sum": sum(values),
            "stddev": math.sqrt(sum((v - mean) ** 2 for v in values) / n)}


def _partition_messages(c: Consumer, topic: str, partition: int) -> Iterator[Message]:
    """Every message of a partition, from its start to its end as of now."""
    high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
    if high == 0:
        return
    c.assign([TopicPartition(topic, partition, 0)])
    n = 0
    while n < high:
        batch = c.consume(min(5000, high - n), 10)
        assert batch, f"{topic}[{partition}] stalled at {n}/{high}"
        yield from batch
        n += len(batch)


def read_topics(settings: Settings) -> list[wire.Reading]:
    """Every reading in the sensor topics, in each partition's order."""
    c = Consumer(settings.kafka.client_config() | {"group.id": "tests-read-all",
                                                   "enable.auto.commit": False})
    readings: list[wire.Reading] = []
    for sensor in settings.sensors:
        topic = settings.topic(sensor)
        for p in c.list_topics(topic, timeout=10).topics[topic].partitions:
            readings += [wire.decode(m.value(), sensor)
                         for m in _partition_messages(c, topic, p)]
    c.close()
    return readings


def rollup_log(settings: Settings) -> list[wire.Bucket | wire.Progress]:
    """Every record of the rollup topic, in the order the stream wrote them."""
    c = Consumer(settings.kafka.client_config() | {"group.id": "tests-read-rollups",
                                                   "enable.auto.commit": False})
    records = [wire.decode_rollup(m.value())
               for m in _partition_messages(c, settings.rollup_topic, 0)]
    c.close()
    return records


def read_rollups(settings: Settings) -> dict[bytes, wire.Bucket | wire.Progress]:
    """The rollup topic as compaction leaves it: the latest record of every key."""
    return {wire.PROGRESS_KEY if isinstance(r, wire.Progress) else
            wire.bucket_key(r.sensor, r.start): r for r in rollup_log(settings)}
