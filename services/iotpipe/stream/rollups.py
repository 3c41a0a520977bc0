"""Publishes the rollup records the stream's state hands out, from the driver.

One idempotent producer; a batch's records are flushed and every delivery checked before the
batch counts as folded, so what the query service reads is never behind the saved state.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, Message, Producer

from iotpipe.core import wire
from iotpipe.core.settings import Settings

log = logging.getLogger(__name__)
# what a new password or certificate may cure (an authorization error is the broker's ACLs)
LOGIN_ERRORS = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL,
                          KafkaError.SASL_AUTHENTICATION_FAILED})


class RollupPublishError(RuntimeError):
    """The rollup topic did not take a batch's records; the batch fails and Spark retries it."""


class RollupPublisher:
    def __init__(self, settings: Settings) -> None:
        self.topic, self.kafka = settings.rollup_topic, settings.kafka
        self.timeout_s = self.timeout(settings)
        self.producer = self._producer()

    @staticmethod
    def timeout(settings: Settings) -> float:
        """How long a batch's records may take to be delivered."""
        return max(30.0, settings.kafka.timeout_s * 6)

    def _producer(self) -> Producer:
        self.login_failed = False
        return Producer(self.kafka.client_config() | {
            "enable.idempotence": True, "acks": "all", "linger.ms": 5,
            "message.timeout.ms": int(self.timeout_s * 1000), "log_level": 3,
            "error_cb": self._on_error})

    def _on_error(self, err: KafkaError) -> None:
        log.warning("rollup producer: %s", err.str())  # (librdkafka's own log line, before)
        if err.code() in LOGIN_ERRORS:
            self.login_failed = True

    def publish(self, records: list[wire.Bucket | wire.Progress]) -> None:
        """Write the records in order and wait until the broker has them all. If they are not
        all delivered because the producer could not log in, the next try has a new one, which
        reads the credentials again (a rotated password or certificate). Otherwise the
        producer stays: its retries keep the records of a bucket in order."""
        self.login_failed = False  # (only during this publish: a past one was overcome)
        try:
            self._publish(records)
        except RollupPublishError:
            if self.login_failed:  # (nothing of its is in flight: it could not log in)
                fresh = self._producer()  # (a credential file gone: raises, the old stays)
                self.producer.purge()  # Spark retries the batch, which writes them in full
                self.producer = fresh
            raise

    def _publish(self, records: list[wire.Bucket | wire.Progress]) -> None:
        failures: list[str] = []

        def delivered(err: KafkaError | None, _: Message) -> None:
            if err is not None:
                failures.append(err.str())

        for record in records:
            key, value = wire.encode_rollup(record)
            while True:
                try:
                    self.producer.produce(self.topic, value, key, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self.producer.poll(0.1)
        if self.producer.flush(self.timeout_s) > 0:
            raise RollupPublishError(f"{self.topic}: records not delivered in {self.timeout_s}s")
        if failures:
            raise RollupPublishError(f"{self.topic}: {failures[0]}")

    def close(self) -> None:
        self.producer.flush(self.timeout_s)
