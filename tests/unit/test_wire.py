"""The reading wire format: round trips, and every malformed message is refused with a reason."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotpipe.core import wire

readings = st.builds(
    wire.Reading, device=st.text(min_size=1, max_size=30), sensor=st.sampled_from(["t", "h"]),
    seq=st.integers(0, wire.MAX_SEQ), ts=st.integers(0, wire.MAX_TS_MS),
    value=st.one_of(st.integers(-10**12, 10**12),
                    st.floats(allow_nan=False, allow_infinity=False)))


@given(readings)
def test_round_trip(r: wire.Reading) -> None:
    raw = wire.encode(r)
    assert wire.decode(raw, r.sensor) == r
    assert json.loads(raw) == r._asdict()
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
    (b'{"device":"d","sensor":"h","seq":1,"ts":1,"value":1}', "sensor must be 't'"),
    (b'{"device":"d","sensor":"t","seq":-1,"ts":1,"value":1}', "seq must be"),
    (b'{"device":"d","sensor":"t","seq":1.0,"ts":1,"value":1}', "seq must be"),
    (b'{"device":"d","sensor":"t","seq":true,"ts":1,"value":1}', "seq must be"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":"1","value":1}', "ts must be"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":"1"}', "value must be a number"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":false}', "value must be a number"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":NaN}', "non-finite"),
    (b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1e999}', "value must be finite"),
    (b'{"device":"\\udc00x","sensor":"t","seq":1,"ts":1,"value":1}', "valid Unicode"),
])
def test_malformed(raw: bytes | None, reason: str) -> None:
    with pytest.raises(wire.MalformedReading, match=reason):
        wire.decode(raw, "t")


def _both(raw: bytes | None, sensor: str) -> tuple[object, object]:
    try:
        slow: object = wire.decode(raw, sensor)
        slow = (slow.device.encode(), slow.seq, slow.ts, slow.value)
    except wire.MalformedReading:
        slow = "malformed"
    try:
        fast: object = wire.decode_fields(raw, sensor.encode())
    except wire.MalformedReading:
        fast = "malformed"
    return slow, fast


@given(readings)
def test_fast_path_agrees_on_valid_readings(r: wire.Reading) -> None:
    slow, fast = _both(wire.encode(r), r.sensor)
    assert slow == fast != "malformed"
    assert type(fast[3]) is type(r.value)


@given(readings, st.integers(0, 200), st.binary(min_size=0, max_size=3))
def test_fast_path_agrees_on_mutated_messages(r: wire.Reading, at: int, junk: bytes) -> None:
    raw = wire.encode(r)
    at = at % (len(raw) + 1)
    for mutated in (raw[:at] + junk + raw[at:], raw[:at] + raw[at + 1:], raw[:at] + junk):
        slow, fast = _both(mutated, r.sensor)
        assert slow == fast


@pytest.mark.parametrize("raw", [
    b'{"device":"d","sensor":"t","seq":01,"ts":1,"value":1}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":1e999}',
    b'{"device":"d","sensor":"t","seq":99999999999999999999,"ts":1,"value":1}',
    b'{"device":"d","sensor":"t","seq":1,"ts":999999999999999,"value":1}',
    b'{"device":"\xff","sensor":"t","seq":1,"ts":1,"value":1}',
    b'{"device":"d","sensor":"u","seq":1,"ts":1,"value":1}',
    b'{"device":"d","sensor":"t","seq":1,"ts":1,"value":-0}',
    b'{"device":"\\ud800","sensor":"t","seq":1,"ts":1,"value":1}',
    b'{"device":"d\\"q","sensor":"t","seq":1,"ts":1,"value":2.5E+3}',
])
def test_fast_path_edge_cases(raw: bytes) -> None:
    slow, fast = _both(raw, "t")
    assert slow == fast


# readings in the narrow form the columns path takes (ASCII device without escapes, ts of 13
# digits, no exponent, at most 300 integer digits; a small float may still print an exponent)
narrow_readings = st.builds(
    wire.Reading, sensor=st.just("t"), seq=st.integers(0, wire.MAX_SEQ),
    device=st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters='"\\'),
                   min_size=1, max_size=30),
    ts=st.integers(10**12, 10**13 - 1),
    value=st.one_of(st.integers(-10**12, 10**12), st.integers(-10**300, 10**300),
                    st.floats(-1e6, 1e6)))


def _fields_or_none(raws: list[bytes | None], sensor: str) -> list[object] | None:
    fields = [_both(raw, sensor)[1] for raw in raws]
    return None if "malformed" in fields else fields


@given(st.lists(narrow_readings, min_size=1, max_size=20), st.none() | readings,
       st.integers(0, 30), st.integers(0, 200), st.binary(max_size=3))
def test_columns_agree_with_one_by_one(rs: list[wire.Reading], other: wire.Reading | None,
                                       mutate: int, at: int, junk: bytes) -> None:
    """A run decodes as columns only when every message is valid, and then to the same fields;
    one mutated message (anywhere, into anything, a newline too) or one reading outside the
    narrow form (any valid reading) sends the run to the slow path. Runs in the narrow form
    do take the columns path."""
    if other is not None:
        rs = [*rs[:mutate], other._replace(sensor="t"), *rs[mutate:]]
    raws: list[bytes | None] = [wire.encode(r) for r in rs]
    if mutate < len(raws):
        raw = raws[mutate]
        assert raw is not None
        at %= len(raw) + 1
        raws[mutate] = raw[:at] + junk + raw[at + 1:]
    cols = wire.decode_columns(raws, b"t")
    one_by_one = _fields_or_none(raws, "t")
    if cols is not None:
        assert list(zip(cols.devices, cols.seqs, cols.ts(), cols.values,
                        strict=True)) == one_by_one
        assert [type(v) for v in cols.values] == [type(f[3]) for f in one_by_one]  # type: ignore[index]
        ts = [f[2] for f in one_by_one]  # type: ignore[index]
        lo, hi = min(ts), max(ts)
        assert cols.within(lo, hi) and not cols.within(lo + 1, hi) and not cols.within(lo, hi - 1)
    elif one_by_one is not None:  # valid, but not in the narrow form
        assert any(not _NARROW.fullmatch(raw or b"") for raw in raws)


# the narrow form's outline: what the columns path leaves to the slow one
_NARROW = re.compile(rb'\{"device":"[^"\\\x00-\x1f\x80-\xff\n]+","sensor":"t","seq":[0-9]+,'
                     rb'"ts":[1-9][0-9]{12},"value":-?[0-9]{1,300}(\.[0-9]+)?\}')


@pytest.mark.parametrize("raws", [
    [None], [b""], [b'{"device":"d","sensor":"t","seq":1,"ts":1700000000000,"value":1}', None],
    [b'{"device":"d","sensor":"t","seq":1,"ts":1700000000000,"value":1}\n'  # two in one
     b'{"device":"d","sensor":"t","seq":2,"ts":1700000000000,"value":1}', b"garbage"],
    [b'{"device":"d","sensor":"t","seq":9223372036854775808,"ts":1700000000000,"value":1}'],
    [b'{"device":"d","sensor":"t","seq":1,"ts":1700000000000,"value":' + b"9" * 400 + b'.5}'],
    [b'{"device":"d","sensor":"t","seq":1,"ts":1700000000000,"value":' + b"9" * 5000 + b"}"],
    [b'{"device":"\xff","sensor":"t","seq":1,"ts":1700000000000,"value":1}'],
    [b'{"device":"d","sensor":"u","seq":1,"ts":1700000000000,"value":1}'],
])
def test_columns_refuse_what_one_by_one_refuses(raws: list[bytes | None]) -> None:
    assert wire.decode_columns(raws, b"t") is None
    assert _fields_or_none(raws, "t") is None
