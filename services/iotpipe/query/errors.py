"""Why a window could not be read; the API maps each to its status (503, 504, an error line)."""

from confluent_kafka import KafkaError, KafkaException

# librdkafka's codes for "no such topic or partition", from the broker or the client's metadata
_MISSING = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
            KafkaError._UNKNOWN_PARTITION)


def is_missing(err: object) -> bool:
    """Whether a librdkafka error (or its KafkaException) says a topic or partition is missing."""
    if isinstance(err, KafkaException) and err.args:
        err = err.args[0]
    return isinstance(err, KafkaError) and err.code() in _MISSING


class BrokerUnavailable(RuntimeError):
    """The broker did not answer within the timeout."""


class ReaderLost(RuntimeError):
    """A reader process stopped during a scan (killed, e.g. for memory); new ones are started."""


class ScanTimeout(RuntimeError):
    """The window could not be read before the request deadline."""


class UnknownTopic(LookupError):
    """The sensor's topic does not exist on the broker."""
