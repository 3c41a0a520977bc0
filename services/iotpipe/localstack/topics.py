"""Creates the sensor topics and the rollup topic (the project never relies on broker
auto-creation)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from iotpipe.core.settings import Settings


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the missing sensor topics with the configured partitions and retention, and the
    rollup topic: compacted (a bucket's latest value is all that counts), one partition (its
    records stay in the order the stream wrote them), its own retention.

    Returns the names created; existing topics are left as they are.
    """
    admin = AdminClient(settings.kafka.client_config() | {"log_level": 0})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [settings.topic(s) for s in settings.sensors]
    new = [NewTopic(t, num_partitions=settings.topic_partitions, replication_factor=1,
                    config={"retention.ms": str(settings.topic_retention_ms),
                            "message.timestamp.type": "CreateTime"})
           for t in wanted if t not in existing]
    if settings.rollup_topic not in existing:
        new.append(NewTopic(settings.rollup_topic, num_partitions=1, replication_factor=1,
                            config=rollup_topic_config(settings)))
    if not new:
        return []
    created = []
    for topic, future in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
            created.append(topic)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def rollup_topic_config(settings: Settings) -> dict[str, str]:
    """Compacted and deleted after its own retention; segments roll hourly, since compaction
    never touches the open segment: a worker reading the topic at start-up reads at most an
    hour of repeated writes of the same buckets (and progress marks)."""
    return {"cleanup.policy": "compact,delete", "segment.ms": "3600000",
            "retention.ms": str(settings.rollup_retention_ms)}
