"""The reading wire format: the one place that knows how a reading looks on a Kafka topic
(the rules, the edges of JSON included: README, "Wire format").

Topic = sensor type. Key = device id (UTF-8), so a device's readings stay ordered in one
partition. Value = compact JSON object
``{"device": str, "sensor": str, "seq": int, "ts": int (epoch ms), "value": number}``;
extra fields are ignored; (``device``, ``seq``) identifies a reading. The message timestamp
equals ``ts``; a reading stamped later than its message by more than a slack (the allowed
lateness) is malformed: a clock far ahead would make every later reading of its partition late.
msgspec's JSON codec over the typed `Reading` applies the rules; UTF-8 is checked here, as
msgspec skips the text of fields it ignores.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from operator import sub
from typing import Annotated, NamedTuple

import msgspec

MAX_DEVICE = 256  # characters: a device id is held per reading cached and per device counted
MAX_SEQ = 2**63 - 1
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
MAX_VALUE = int(sys.float_info.max)  # an integer value beyond this has no finite double


class MalformedReading(ValueError):
    """A topic message that is not a valid reading; it is skipped and counted, never guessed."""

    @property
    def reason(self) -> str:
        """The kind of defect, without the message's content (that goes to a log line)."""
        return str(self).split(":")[0]


class Reading(msgspec.Struct, frozen=True, gc=False):
    """One reading. An integer value is exact and must lie within a double's range (the stream
    computes in doubles: `_finite`); a float must be finite (no NaN; 1e999 overflows)."""

    device: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_DEVICE)]
    sensor: str
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
    ts: Annotated[int, msgspec.Meta(ge=0, le=MAX_TS_MS)]
    value: int | float


# the message value of a reading: compact JSON, fields in the documented order
encode: Callable[[Reading], bytes] = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Reading).decode
_FIELD_RULES = {
    "device": f"device must be a string of 1 to {MAX_DEVICE} characters",
    "sensor": "sensor must be a string",
    "seq": "seq must be a non-negative integer",
    "ts": "ts must be epoch milliseconds",
    "value": "value must be a finite number",
}


def key(reading: Reading) -> bytes:
    return reading.device.encode()


def _malformed(e: msgspec.MsgspecError) -> MalformedReading:
    text = str(e)
    if not isinstance(e, msgspec.ValidationError):  # not JSON, bad UTF-8, NaN, lone surrogate
        return MalformedReading(f"not JSON: {text}")
    if "missing required field" in text:
        return MalformedReading(f"missing field {text.rsplit('`', 2)[-2]}")
    if "- at `$." in text:
        return MalformedReading(f"{_FIELD_RULES[text.rsplit('`$.', 1)[1][:-1]]}: {text}")
    return MalformedReading(f"not a JSON object: {text}")


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def decode(raw: bytes | None, sensor: str | None = None) -> Reading:
    """Parse and validate one message value; raise MalformedReading with the reason. Given
    `sensor`, a reading of another sensor (in the wrong topic) is malformed too."""
    if raw is None:
        raise MalformedReading("empty message")
    if not (raw.isascii() or _utf8(raw)):
        raise MalformedReading("not JSON: not UTF-8 text")
    try:
        reading = _decode(raw)
    except msgspec.MsgspecError as e:
        raise _malformed(e) from None
    except RecursionError:
        raise MalformedReading("not JSON: nested too deeply") from None
    if sensor is not None and reading.sensor != sensor:
        raise MalformedReading(f"sensor must be {sensor!r}")
    if not _finite(reading.value):
        raise MalformedReading("value must be a finite number: beyond a double's range")
    return reading


def _finite(value: int | float) -> bool:
    return type(value) is not int or -MAX_VALUE <= value <= MAX_VALUE


class Readings(NamedTuple):
    """Valid readings of a run of messages, one list per field: the form aggregates read."""

    devices: list[str]
    seqs: list[int]
    ts: list[int]
    values: list[int | float]


def _fields(readings: list[Reading]) -> Readings:
    return Readings([r.device for r in readings], [r.seq for r in readings],
                    [r.ts for r in readings], [r.value for r in readings])


def decode_many(raws: Sequence[bytes | None], sensor: str, written: list[int],
                slack_ms: int) -> tuple[Readings, dict[int, str]]:
    """The valid readings of a run of `sensor` messages, in order, and the reason each
    malformed one was refused, by its index in `raws`; the hot path of the query service and
    the stream. `written`: the messages' timestamps (see the module's doc for `slack_ms`)."""
    texts = [raw for raw in raws if raw is not None]
    try:
        decoded = [_decode(raw) for raw in texts]
        got = _fields(decoded)
        if ([r.sensor for r in decoded].count(sensor) == len(raws)  # the common case
                and (b"".join(texts).isascii() or all(map(_utf8, texts)))
                and _finite(min(got.values, default=0)) and _finite(max(got.values, default=0))
                # most producers stamp a message with its reading's ts: no subtraction then
                and ((got.ts == written and slack_ms >= 0)
                     or max(map(sub, got.ts, written), default=0) <= slack_ms)):
            return got, {}
    except (msgspec.MsgspecError, RecursionError):
        pass
    valid, malformed = [], {}
    for i, raw in enumerate(raws):
        try:
            reading = decode(raw, sensor)
            if reading.ts - written[i] > slack_ms:
                raise MalformedReading(AHEAD)
            valid.append(reading)
        except MalformedReading as e:
            malformed[i] = e.reason
    return _fields(valid), malformed


AHEAD = "ts later than the message's timestamp"  # (by more than the slack)


# Rollup records: what the streaming app writes to the compacted rollup topic and the query
# service reads back. One JSON object per record, tagged by "kind".

class Bucket(msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="bucket"):
    """The whole aggregate of one sensor's readings in one bucket of event time: its full value,
    never a delta, so a micro-batch replayed after a crash writes the same record again.
    Key: `bucket_key(sensor, start)`."""

    sensor: str
    start: int  # epoch ms, a multiple of the bucket length
    count: Annotated[int, msgspec.Meta(ge=1)]
    total: float
    m2: Annotated[float, msgspec.Meta(ge=0)]  # sum of squared deviations from the mean
    minimum: float
    maximum: float
    ints: bool  # every value was a JSON integer: sums and extremes are answered as integers
    # the minimum (maximum) was a JSON integer, in a bucket that also holds other numbers
    # (records written before these fields read as False: such extremes answer as floats)
    min_int: bool = False
    max_int: bool = False


class Progress(msgspec.Struct, frozen=True, gc=False, tag_field="kind", tag="progress"):
    """How far the rollups reach: they cover event time from `since` on, and every bucket
    ending at or before `final` is complete (the stream's watermark has passed it). Buckets
    are `bucket_ms` long (a reader cutting time otherwise must not use them)."""

    since: int
    final: int
    bucket_ms: int


PROGRESS_KEY = b"progress"
_decode_rollup = msgspec.json.Decoder(Bucket | Progress).decode


class MalformedRollup(ValueError):
    """A rollup record that cannot be read; its bucket is answered from the readings."""


def bucket_key(sensor: str, start: int) -> bytes:
    return f"{sensor}|{start}".encode()


def encode_rollup(record: Bucket | Progress) -> tuple[bytes, bytes]:
    """Key and value of a rollup record."""
    key = PROGRESS_KEY if isinstance(record, Progress) else bucket_key(record.sensor, record.start)
    return key, msgspec.json.encode(record)


def decode_rollup(raw: bytes | None) -> Bucket | Progress:
    if raw is None:
        raise MalformedRollup("empty record")
    try:
        return _decode_rollup(raw)
    except (msgspec.MsgspecError, RecursionError) as e:
        raise MalformedRollup(str(e)) from None
