"""Whether scans of one sensor share a device (then that sensor is read again in one scan),
against the same question asked of Python sets, for any order of the scans' fingerprints."""

from __future__ import annotations

import itertools
from array import array

from hypothesis import given
from hypothesis import strategies as st

from iotpipe.query.service import _shared

fingerprints = st.lists(st.lists(st.integers(-50, 50), max_size=30, unique=True), max_size=5)


@given(fingerprints)
def test_shared_iff_two_scans_meet(parts: list[list[int]]) -> None:
    want = any(set(a) & set(b) for a, b in itertools.combinations(parts, 2))
    for order in (parts, parts[::-1]):
        assert _shared([array("q", p) for p in order]) is want
