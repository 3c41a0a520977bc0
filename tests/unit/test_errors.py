"""Which librdkafka errors mean "no such topic": `is_missing`, which the rollup follower asks of
the exceptions it catches, and the reader's `_as_error`, built on it."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from iotpipe.query.errors import BrokerUnavailable, UnknownTopic, is_missing
from iotpipe.query.reader import _as_error

MISSING = [KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
           KafkaError._UNKNOWN_PARTITION]
OTHER = [KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError.OFFSET_OUT_OF_RANGE,
         KafkaError.TOPIC_AUTHORIZATION_FAILED]


@pytest.mark.parametrize("code", MISSING)
def test_a_missing_topic_or_partition_is_an_unknown_topic(code: int) -> None:
    assert is_missing(KafkaError(code))
    assert is_missing(KafkaException(KafkaError(code)))
    assert isinstance(_as_error(KafkaError(code), "reading"), UnknownTopic)


@pytest.mark.parametrize("code", OTHER)
def test_other_errors_mean_the_broker_is_unavailable(code: int) -> None:
    assert not is_missing(KafkaError(code))
    assert not is_missing(KafkaException(KafkaError(code)))
    error = _as_error(KafkaError(code), "reading")
    assert isinstance(error, BrokerUnavailable) and str(error).startswith("reading: ")


def test_no_error_object_is_not_a_missing_topic() -> None:
    assert not is_missing(None)
    assert not is_missing(KafkaException())
    assert isinstance(_as_error(None, "reading"), BrokerUnavailable)
