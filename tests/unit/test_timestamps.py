from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotpipe.query.timestamps import BadTimestamp, format_ms, parse_ms


def test_formats() -> None:
    assert parse_ms("2020-01-13 15:12:00") == 1578928320000
    assert parse_ms("2020-01-13T15:12:00Z") == 1578928320000
    assert parse_ms("2020-01-13T16:12:00.250+01:00") == 1578928320250
    assert parse_ms("1970-01-01 00:00:00") == 0
    assert parse_ms("2020-01-14T14:59:00-23:59") == parse_ms("2020-01-15T14:58:00Z")


@pytest.mark.parametrize("text", ["2020-01-13", "2020-01-13T15:12:00", "13/01/2020 15:12:00",
                                  "2020-01-13 15:12:00.1234", "2020-13-01 00:00:00", 12, None,
                                  "2020-01-13 15:12:00 ", "2020-01-13T15:12:00+00:60",
                                  "2020-01-13T15:12:00+24:00", "2020-01-13T15:12:00-00:99",
                                  "\uff11\uff19\uff17\uff10-01-01 00:00:00"])
def test_refused(text: object) -> None:
    with pytest.raises(BadTimestamp):
        parse_ms(text)


@given(st.integers(0, 253_402_300_799_999))
def test_round_trip(ms: int) -> None:
    assert parse_ms(format_ms(ms)) == ms
