"""The stream's live console table keeps its columns apart whatever the values."""

from __future__ import annotations

import pytest

from iotpipe.stream.runner import console_table
from iotpipe.stream.state import Stats, StreamState


@pytest.mark.parametrize(("value", "shown"), [(21.456, "21.46"), (-999_999.994, "-999999.99"),
                                              (1.25e15, "1.250e+15"), (-3e200, "-3.000e+200")])
def test_every_column_stays_apart(value: float, shown: str) -> None:
    state = StreamState(window_ms=60_000, lateness_ms=30_000)
    state.totals["temperature"] = Stats(123_456_789, value * 123_456_789, value, value)
    header, row = console_table(state, ("temperature",), 7).splitlines()[-2:]
    cells = row.split()
    assert header.split() == ["sensor", "count", "min", "max", "mean", "window", "w.count",
                              "w.mean"]
    assert cells[:5] == ["temperature", "123456789", shown, shown, shown]
    assert cells[5:] == ["00:00:00", "0", "-"]  # no window yet
    assert len(row) == len(header) or len(shown) > 10  # aligned while the values fit
