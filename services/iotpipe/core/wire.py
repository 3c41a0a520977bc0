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
