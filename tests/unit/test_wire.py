"""The reading wire format: round trips, and every message is judged as the reference rules
(written out below with the standard library's JSON parser) judge it."""

from __future__ import annotations

import json
import math
import sys

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from iotpipe.core import wire

readings = st.builds(
    wire.Reading, device=st.text(min_size=1, max_size=30), sensor=st.sampled_from(["t", "h"]),
    seq=st.integers(0, wire.MAX_SEQ), ts=st.integers(0, wire.MAX_TS_MS),
    value=st.one_of(st.integers(-10**12, 10**12), st.integers(-wire.MAX_VALUE, wire.MAX_VALUE),
                    st.floats(allow_nan=False, allow_infinity=False)))


FIELDS = ("device", "sensor", "seq", "ts", "value")


def _text(v: object) -> bool:
    """A JSON string that is Unicode text (not a lone surrogate such as "\\ud800")."""
    try:
        return type(v) is str and bool(v.encode() or True)
    except UnicodeEncodeError:
        return False


def _all_text(v: object) -> bool:
    if isinstance(v, _Object):
        return all(_text(k) and _all_text(x) for k, x in v.pairs)
    if isinstance(v, list):
        return all(map(_all_text, v))
    return not isinstance(v, str) or isinstance(v, _TooLong) or _text(v)


def _field_ok(name: str, v: object) -> bool:
    if name == "device":
        return _text(v) and 1 <= len(v) <= wire.MAX_DEVICE
    if name == "sensor":
        return _text(v)
    if name in ("seq", "ts"):
        top = wire.MAX_SEQ if name == "seq" else wire.MAX_TS_MS
        return type(v) is int and 0 <= v <= top
    return (type(v) is int and abs(v) <= sys.float_info.max) or (
        type(v) is float and math.isfinite(v))


class _Object(dict):
    """A JSON object that remembers every copy of a key (the last one is its value)."""

    def __init__(self, pairs: list[tuple[str, object]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


class _TooLong(str):
    """An integer of over 4300 characters, the sign counted (msgspec's limit): refused in a
    reading's field, ignored elsewhere like the rest of an extra field."""


def _int(text: str) -> int | str:
    return _TooLong(text) if len(text) > 4300 else int(text)


def reference(raw: bytes | None, sensor: str) -> tuple[str, int, int, int | float] | None:
    """The documented rules, spelled out: None when the message is not a valid reading."""
    if raw is None:
        return None
    try:
        obj = json.loads(raw.decode(), parse_constant=lambda name: 1 / 0, parse_int=_int,
                         object_pairs_hook=_Object)
    except (UnicodeError, ValueError, ZeroDivisionError, RecursionError):
        return None  # not UTF-8, not JSON, NaN, too deep
    if not _all_text(obj):
        return None  # a lone surrogate anywhere, in any copy
    if type(obj) is not _Object or not set(FIELDS) <= obj.keys() or obj["sensor"] != sensor:
        return None
    if any(k in FIELDS and not _field_ok(k, v) for k, v in obj.pairs):
        return None  # a field given twice: every copy must be valid, the last one counts
    return obj["device"], obj["seq"], obj["ts"], obj["value"]


def _verdict(raw: bytes | None, sensor: str) -> tuple[str, int, int, int | float] | None:
    try:
        r = wire.decode(raw, sensor)
    except wire.MalformedReading:
        return None
    return r.device, r.seq, r.ts, r.value


@given(readings)
def test_round_trip(r: wire.Reading) -> None:
    raw = wire.encode(r)
    assert wire.decode(raw, r.sensor) == r
    assert json.loads(raw) == msgspec.structs.asdict(r)
    assert list(json.loads(raw)) == ["device", "sensor", "seq", "ts", "value"]
    assert wire.key(r) == r.device.encode()


def test_documented_example() -> None:
    raw = b'{"device":"temperature-0","sensor":"temperature","seq":7,"ts":1578928320000,' \
          b'"value":21.5,"firmware":"1.2"}'
    assert wire.decode(raw, "temperature") == wire.Reading(
        "temperature-0", "temperature", 7, 1578928320000, 21.5)


@pytest.mark.parametrize("raw,reason", [
    (None, "empty message"),
    (b"", "not JSON"),
    (b"\xff", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":1}', "missing field value"),
    (b'{"device":"","sensor":"t","seq":1,"ts":1,"value":1}', "device must be"),
    (b'{"device":3,"sensor":"t","seq":1,"ts":1,"value":1}', "device must be"),
    (b'{"device":"' + b"d" * 257 + b'","sensor":"t","seq":1,"ts":1,"value":1}',
     "device must be a string of 1 to 256 characters"),
    (b'{"device":"d","sensor":"h","seq":1,"ts":1,"value":1}', "sensor must be 't'"),
    (b'{"device":"d","sensor":1,"seq":1,"ts":1,"value":1}', "sensor must be a string"),
    (b'{"device":"d","sensor":"t","seq":-1,"ts":1,"value":1}', "seq must be"),
    (b'{"device":"d","sensor":"t","seq":1.0,"ts":1,"value":1}', "seq must be"),
    (b'{"device":"d","sensor":"t","seq":true,"ts":1,"value":1}', "seq must be"),
    (b'{"device":"d","sensor":"t","seq":9223372036854775808,"ts":1,"value":1}', "seq must be"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":"1","value":1}', "ts must be"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":253402300800000,"value":1}', "ts must be"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":"1"}', "value must be a finite number"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":false}', "value must be"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":NaN}', "not JSON"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1e999}', "value must be a finite"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":' + b"9" * 5000 + b"}", "value must"),
    (b'{"device":"\\udc00x","sensor":"t","seq":1,"ts":1,"value":1}', "not JSON"),
])
def test_malformed(raw: bytes | None, reason: str) -> None:
    with pytest.raises(wire.MalformedReading, match=reason) as e:
        wire.decode(raw, "t")
    assert reference(raw, "t") is None
    assert e.value.reason == str(e.value).split(":")[0]


@settings(max_examples=300)
@given(readings)
def test_valid_readings_agree_with_the_reference(r: wire.Reading) -> None:
    got = _verdict(wire.encode(r), r.sensor)
    assert got == reference(wire.encode(r), r.sensor) is not None
    assert type(got[3]) is type(r.value)  # type: ignore[index]


@settings(max_examples=300)
@given(readings, st.integers(0, 200), st.binary(min_size=0, max_size=3))
def test_mutated_messages_agree_with_the_reference(r: wire.Reading, at: int,
                                                   junk: bytes) -> None:
    raw = wire.encode(r)
    at = at % (len(raw) + 1)
    for mutated in (raw[:at] + junk + raw[at:], raw[:at] + raw[at + 1:], raw[:at] + junk):
        assert _verdict(mutated, r.sensor) == reference(mutated, r.sensor)


@pytest.mark.parametrize("raw", [
    b'{"device":"d","sensor":"t","seq":01,"ts":1,"value":1}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1e999}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1,"x":[NaN]}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1,"x":1e999}',
    b'{"device":"d","sensor":"t","seq":99999999999999999999,"ts":1,"value":1}',
    b'{"device":"d","sensor":"t","seq":1,"ts":999999999999999,"value":1}',
    b'{"device":"\xff","sensor":"t","seq":1,"ts":1,"value":1}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":-0}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":-0.0}',
    b'{"device":"\\ud800","sensor":"t","seq":1,"ts":1,"value":1}',
    b'{"device":"\\ud83d\\ude00","sensor":"t","seq":1,"ts":1,"value":1}',
    b'{"device":"d\\"q","sensor":"t","seq":1,"ts":1,"value":2.5E+3}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1,"value":2.5}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1,"device":""}',
    b' {"device":"d","sensor":"t","seq":1,"ts":1,"value":1}\n',
    b'{"device":"","sensor":"t","seq":1,"ts":1,"value":1,"device":"d"}',
    b'{"device":"d","sensor":"t","seq":-1,"ts":1,"value":1,"seq":2}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1,"x":"\xff"}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1,"\xff":1}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1,"x":"\xed\xa0\x80"}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1,"x":"\\ud800"}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1,"x":' + b"9" * 4301 + b"}",
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":-' + b"9" * 4299 + b"}",
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":-' + b"9" * 4300 + b"}",
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1,"x":' + b"[" * 5000 + b"]" * 5000
    + b"}",
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":' + b"9" * 4300 + b"}",
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":' + b"9" * 4301 + b"}",
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":' + b"9" * 400 + b".5}",
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":' + b"9" * 400 + b"}",
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":%d}' % wire.MAX_VALUE,
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":-%d}' % (wire.MAX_VALUE + 1),
])
def test_edge_cases_agree_with_the_reference(raw: bytes) -> None:
    assert _verdict(raw, "t") == reference(raw, "t")


T_WRITTEN = 1_700_000_000_000


def _odd(r: wire.Reading) -> bytes:
    """A reading whose JSON msgspec decodes, but which breaks a rule checked after it: bad
    UTF-8 in an extra field, or an integer value beyond a double's range."""
    raw = wire.encode(r)
    if r.seq % 3 == 0:
        return raw[:-1] + b',"note":"\xff"}'
    beyond = (wire.MAX_VALUE + 1) * (-1 if r.seq % 3 == 1 else 1)
    return raw.replace(b'"value":', f'"value":{beyond},"x":'.encode())


_of_t = readings.map(lambda r: msgspec.structs.replace(r, sensor="t"))


@settings(max_examples=300)
@given(st.lists(st.tuples(
    # valid readings of the run's sensor named twice: a third of the draws, not a sixth
    st.one_of(_of_t.map(wire.encode), _of_t.map(wire.encode), _of_t.map(_odd),
              readings.map(wire.encode), st.none(), st.binary(max_size=40)),
    st.sampled_from([0, T_WRITTEN, wire.MAX_TS_MS])), max_size=20),
    st.sampled_from([-1, 0, 30_000]), st.booleans())
@example([(None, wire.MAX_TS_MS), (wire.encode(wire.Reading("d", "t", 1, T_WRITTEN, 1)), 0)],
         0, True)  # the stamps of the readings after a refused message stay theirs
@example([(b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":%d}' % v, wire.MAX_TS_MS)
          for v in (1, wire.MAX_VALUE + 1)], 0, False)  # the largest and the smallest value
@example([(b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":%d}' % v, wire.MAX_TS_MS)
          for v in (1, -wire.MAX_VALUE - 1)], 0, False)  # are both checked
@example([(b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1,"x":"\xff"}', 1)], 0, False)
def test_decode_many_equals_one_by_one(messages: list[tuple[bytes | None, int]],
                                       slack_ms: int, ahead: bool) -> None:
    """The same readings, and the same reason for each malformed message, as `decode` and the
    rule on a reading stamped after its message (`ahead`: messages written at one of three
    times, else all at the latest), whatever the mix of messages in a run."""
    raws, sensor = [raw for raw, _ in messages], "t"
    written = [t if ahead else wire.MAX_TS_MS for _, t in messages]
    valid, malformed = wire.decode_many(raws, sensor, written, slack_ms)
    expected: dict[int, str] = {}
    for i, raw in enumerate(raws):
        verdict = _verdict(raw, sensor)
        if verdict is None:
            expected[i] = _reason(raw, sensor)
        elif verdict[2] - written[i] > slack_ms:
            expected[i] = wire.AHEAD
    assert malformed == expected
    assert list(zip(*valid, strict=True)) == [
        _verdict(raw, sensor) for i, raw in enumerate(raws) if i not in expected]


def _reason(raw: bytes | None, sensor: str) -> str:
    with pytest.raises(wire.MalformedReading) as refused:
        wire.decode(raw, sensor)
    return refused.value.reason


_SNIPPETS = ['"d"', '""', '"t"', '"h"', "1", "-1", "0", "1.5", "1e999", "-0.0", "true", "null",
             "[]", '{"seq":-1}', "[1,[2]]", '"\\ud800"', "9" * 4301, "-" + "9" * 4300, "NaN"]


@settings(max_examples=500)
@given(st.lists(st.tuples(st.sampled_from([*FIELDS, "x", "firmware"]), st.sampled_from(_SNIPPETS)),
                max_size=9), st.booleans())
def test_objects_with_repeated_and_extra_fields_agree(pairs: list[tuple[str, str]],
                                                      complete: bool) -> None:
    """Fields given twice, extra fields of every kind, invalid copies before valid ones."""
    if complete:
        pairs = [("device", '"d"'), ("sensor", '"t"'), ("seq", "1"), ("ts", "1"),
                 ("value", "1"), *pairs]
    raw = ("{" + ",".join(f'"{k}":{v}' for k, v in pairs) + "}").encode()
    assert _verdict(raw, "t") == reference(raw, "t")



def test_a_device_id_is_at_most_256_characters_not_bytes() -> None:
    longest = wire.Reading("\u00e9" * wire.MAX_DEVICE, "t", 1, 1, 1)  # 512 bytes of UTF-8
    assert wire.decode(wire.encode(longest), "t") == longest
    assert reference(wire.encode(longest), "t") is not None


@pytest.mark.parametrize("ts,ok", [(T_WRITTEN, True), (T_WRITTEN - 10**6, True),
                                   (T_WRITTEN + 30_000, True), (T_WRITTEN + 30_001, False),
                                   (wire.MAX_TS_MS, False)])
def test_a_reading_stamped_after_its_message_is_malformed(ts: int, ok: bool) -> None:
    """The message timestamp must equal ts: a reading later than its message by more than the
    slack (a clock far ahead) is refused, alone and among valid ones, in any position."""
    good = [wire.Reading("d", "t", i, T_WRITTEN - i, i) for i in range(5)]
    odd = wire.Reading("e", "t", 0, ts, 7)
    for at in (0, 2, 5):
        batch = [*good[:at], odd, *good[at:]]
        valid, malformed = wire.decode_many([wire.encode(r) for r in batch], "t",
                                            [T_WRITTEN] * len(batch), 30_000)
        assert list(zip(*valid, strict=True)) == [(r.device, r.seq, r.ts, r.value)
                                                  for r in (batch if ok else good)]
        assert malformed == ({} if ok else {at: wire.AHEAD})
