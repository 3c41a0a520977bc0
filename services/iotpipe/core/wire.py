"""The reading wire format: the one place that knows how a reading looks on a Kafka topic.

Topic = sensor type. Key = device id (UTF-8), so a device's readings stay ordered in one
partition. Value = compact JSON object
``{"device": str, "sensor": str, "seq": int, "ts": int (epoch ms), "value": number}``;
extra fields are allowed and ignored. The message timestamp (CreateTime) equals ``ts``.
(``device``, ``seq``) identifies a reading: ``seq`` grows by one per reading of a device.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple

MAX_SEQ = 2**63 - 1
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


class MalformedReading(ValueError):
    """A topic message that is not a valid reading; it is skipped and counted, never guessed."""


class Reading(NamedTuple):
    device: str
    sensor: str
    seq: int
    ts: int
    value: int | float


def _reject_constant(name: str) -> Any:
    raise MalformedReading(f"non-finite number {name}")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_decode_json = _decoder.decode


def encode(reading: Reading) -> bytes:
    """The message value of a reading (compact JSON, fields in the documented order)."""
    return (
        f'{{"device":{json.dumps(reading.device)},"sensor":{json.dumps(reading.sensor)},'
        f'"seq":{reading.seq},"ts":{reading.ts},"value":{json.dumps(reading.value)}}}'
    ).encode()


def key(reading: Reading) -> bytes:
    return reading.device.encode()


def decode(raw: bytes | None, sensor: str | None = None) -> Reading:
    """Parse and validate one message value; raise MalformedReading with the reason.

    When `sensor` is given, a reading of another sensor type (a message in the wrong topic) is
    malformed too: counting it would mix two quantities.
    """
    if raw is None:
        raise MalformedReading("empty message")
    try:
        obj = _decode_json(raw.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedReading(f"not JSON: {e}") from None
    if type(obj) is not dict:
        raise MalformedReading("not a JSON object")
    try:
        device, kind, seq, ts, value = (obj["device"], obj["sensor"], obj["seq"], obj["ts"],
                                        obj["value"])
    except KeyError as e:
        raise MalformedReading(f"missing field {e.args[0]}") from None
    if type(device) is not str or not device:
        raise MalformedReading("device must be a non-empty string")
    try:
        device.encode()
    except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
        raise MalformedReading("device must be valid Unicode") from None
    if type(kind) is not str or (sensor is not None and kind != sensor):
        raise MalformedReading(f"sensor must be {sensor!r}" if sensor else "sensor not a string")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise MalformedReading("seq must be a non-negative integer")
    if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
        raise MalformedReading("ts must be epoch milliseconds")
    vt = type(value)
    if vt is float:
        if not math.isfinite(value):
            raise MalformedReading("value must be finite")
    elif vt is not int:
        raise MalformedReading("value must be a number")
    return Reading(device, kind, seq, ts, value)


# The canonical form `encode` writes (and most producers send): matched without building a
# dict. Anything else (whitespace, escapes, extra fields, odd values) takes `decode`'s path,
# so both paths accept and refuse exactly the same messages (a property test checks it).
_INT = rb"(?:0|[1-9][0-9]{0,18})"
CANONICAL = re.compile(
    rb'\{"device":"([^"\\\x00-\x1f]+)","sensor":"([^"\\\x00-\x1f]*)","seq":(' + _INT
    + rb'),"ts":(' + _INT + rb'),"value":(-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?)\}')


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def decode_fields(raw: bytes | None, sensor: bytes) -> tuple[bytes, int, int, int | float]:
    """(device as UTF-8 bytes, seq, ts, value) of a message of topic `sensor`; the hot path of
    the query service. Raises MalformedReading exactly when `decode` does."""
    m = CANONICAL.fullmatch(raw) if raw is not None else None
    if m is not None:
        device, topic_sensor, seq_text, ts_text, number, fraction, exponent = m.groups()
        if topic_sensor == sensor and len(number) <= 4000:  # int() refuses over 4300 digits
            seq, ts = int(seq_text), int(ts_text)
            value: int | float = (int(number) if fraction is None and exponent is None
                                  else float(number))
            if (seq <= MAX_SEQ and ts <= MAX_TS_MS and (type(value) is int
                                                       or math.isfinite(value))
                    and (device.isascii() or _utf8(device))):
                return device, seq, ts, value
    r = decode(raw, sensor.decode())
    return r.device.encode(), r.seq, r.ts, r.value


class Columns(NamedTuple):
    """The fields of a run of readings, one sequence per field (see `decode_columns`)."""

    devices: tuple[bytes, ...]
    seqs: list[int]
    stamps: tuple[bytes, ...]  # each ts as its 13 digits: compared as text, parsed on demand
    values: list[int | float]

    def ts(self) -> list[int]:
        return _numbers(self.stamps)  # type: ignore[return-value]

    def within(self, lo: int, hi: int) -> bool:
        """Whether every ts is in [lo, hi]: the common case, answered without parsing them all
        (texts of equal length order as their numbers do)."""
        return lo <= int(min(self.stamps)) and int(max(self.stamps)) <= hi


def _numbers(texts: tuple[bytes, ...]) -> list[int | float]:
    """Number texts the line pattern matched, parsed with one JSON parse: per number, the
    calls of int() and float() cost more than the parsing."""
    return _decode_json(f"[{b','.join(texts).decode()}]")  # type: ignore[no-any-return]


_LINES: dict[bytes, re.Pattern[bytes]] = {}


def _lines_of(sensor: bytes) -> re.Pattern[bytes]:
    """CANONICAL for one line of a newline-joined run of `sensor` messages, narrowed so that
    whatever it matches `decode` reads the same way and the columns need fewer checks: the
    sensor name written in (a reading of another sensor does not match), ts of 13 digits
    (2001-09-09 to 2286-11-20), values without exponents and of at most 300 integer digits
    (always finite). Other readings take the slow path."""
    pattern = _LINES.get(sensor)
    if pattern is None:
        pattern = _LINES[sensor] = re.compile(
            rb'^\{"device":"([^"\\\x00-\x1f]+)","sensor":"' + re.escape(sensor)
            + rb'","seq":(' + _INT + rb'),"ts":([1-9][0-9]{12})'
            + rb',"value":(-?(?:0|[1-9][0-9]{0,299})(?:\.[0-9]+)?)\}$', re.MULTILINE)
    return pattern


def decode_columns(raws: list[bytes | None], sensor: bytes) -> Columns | None:
    """The fields of every message of topic `sensor`, decoded with one regex pass and one
    number parse for the whole run; None unless every message is in the canonical form and
    valid (then `decode_fields` each: it finds the malformed ones). Why: per message, the
    calls cost more than the parsing."""
    try:
        joined = b"\n".join(raws)  # type: ignore[arg-type]
    except TypeError:  # an empty (None) message
        return None
    if joined.count(b"\n") != len(raws) - 1:  # a message holding a newline: lines misalign
        return None
    found = _lines_of(sensor).findall(joined)
    if len(found) != len(raws):  # each line matched whole, so each message did
        return None
    devices, seq_texts, stamps, number_texts = zip(*found, strict=True)
    numbers = _numbers(seq_texts + number_texts)
    seqs, values = numbers[:len(found)], numbers[len(found):]
    if max(seqs) > MAX_SEQ or not (joined.isascii() or all(map(_utf8, devices))):
        return None
    return Columns(devices, seqs, stamps, values)
