"""Aggregation and de-duplication against plain references (hypothesis-generated inputs)."""

from __future__ import annotations

import itertools
import math
import statistics
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.query.aggregate import SeqSet, WindowAggregate, note_rotation

values = st.one_of(st.integers(-10**6, 10**6),
                   st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


@given(st.lists(st.integers(0, 300), max_size=400))
def test_seqset_matches_a_set(seqs: list[int]) -> None:
    s, ref = SeqSet(), set()
    for q in seqs:
        assert s.add(q) == (q not in ref)
        ref.add(q)
    assert len(s) == len(ref)
    runs = list(zip(s.los, s.his, strict=True))
    assert runs == sorted(runs)
    assert all(h + 1 < lo2 for (_, h), (lo2, _) in itertools.pairwise(runs))


def test_seqset_memory_is_bounded_by_gaps_not_readings() -> None:
    s = SeqSet()
    for q in range(100_000):
        s.add(q)
    for q in range(200_000, 300_000, 2):
        s.add(q)
    assert s.runs == 1 + 50_000
    for q in range(200_001, 300_000, 2):  # fill the gaps: runs merge back into one
        s.add(q)
    assert s.runs == 2


@given(st.lists(values, min_size=1, max_size=200), st.integers(1, 5), st.randoms())
def test_merged_partials_equal_the_reference(xs: list[float], parts: int, rnd) -> None:
    chunks: list[list[float]] = [[] for _ in range(parts)]
    for x in xs:
        chunks[rnd.randrange(parts)].append(x)
    total = WindowAggregate()
    for chunk in chunks:
        partial = WindowAggregate()
        for x in chunk:
            partial.add(x)
        total.merge(partial)
    assert total.metric("count") == len(xs)
    assert total.metric("min") == min(xs)
    assert total.metric("max") == max(xs)
    assert math.isclose(total.metric("average"), statistics.fmean(xs), rel_tol=1e-9,
                        abs_tol=1e-6)
    assert math.isclose(total.metric("stddev"), statistics.pstdev(xs), rel_tol=1e-6,
                        abs_tol=1e-6)


@settings(max_examples=50)
@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=100))
def test_integer_average_is_exact_like_statistics_mean(xs: list[int]) -> None:
    agg = WindowAggregate()
    for x in xs:
        agg.add(x)
    assert agg.metric("average") == statistics.mean(xs)
    assert type(agg.metric("average")) is type(statistics.mean(xs))
    assert agg.metric("sum") == sum(xs)


def test_variance_is_stable_for_large_offsets() -> None:
    agg = WindowAggregate()
    xs = [1e9 + v for v in (0.1, 0.2, 0.3, 0.4)] * 1000
    for x in xs:
        agg.add(x)
    assert math.isclose(agg.metric("stddev"), statistics.pstdev(xs), rel_tol=1e-6)


def test_empty_window() -> None:
    agg = WindowAggregate()
    assert [agg.metric(m) for m in ("count", "min", "max", "average", "sum", "stddev")] == [
        0, None, None, None, None, None]


def test_split_balances_ranges_by_size() -> None:
    from iotpipe.query.reader import PartitionRange, split

    ranges = [PartitionRange("t", "t", p, 0, size) for p, size in enumerate([90, 10, 50, 40, 5])]
    groups = split(ranges, 2)
    assert sum(len(g) for g in groups) == 5
    assert {r for g in groups for r in g} == set(ranges)
    assert sorted(sum(r.end - r.start for r in g) for g in groups) == [95, 100]
    assert split(ranges[:1], 4) == [(ranges[0],)]
    assert split([], 3) == []


@given(st.lists(st.lists(st.one_of(st.integers(-10**6, 10**6),
                                   st.floats(-1e6, 1e6, allow_nan=False)), max_size=30),
                max_size=5))
def test_add_many_equals_adding_one_by_one(chunks: list[list[int | float]]) -> None:
    one, many = WindowAggregate(), WindowAggregate()
    for chunk in chunks:
        for v in chunk:
            one.add(v)
        many.add_many(chunk)
    assert (many.count, many.minimum, many.maximum) == (one.count, one.minimum, one.maximum)
    for name in ("sum", "average", "stddev"):
        want, got = one.metric(name), many.metric(name)
        if all(type(v) is int for chunk in chunks for v in chunk):
            assert got == want, name  # integers stay exact
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-6), name


def _seqset(seqs: list[int]) -> SeqSet:
    s = SeqSet()
    for seq in seqs:
        s.add(seq)
    return s


@given(st.lists(st.integers(0, 60), max_size=40), st.lists(st.integers(0, 60), max_size=40))
def test_seqset_overlap_and_union_match_sets(a: list[int], b: list[int]) -> None:
    left, right = _seqset(a), _seqset(b)
    assert left.overlaps(right) == right.overlaps(left) == bool(set(a) & set(b))
    left.update(right)
    union = sorted(set(a) | set(b))
    assert len(left) == len(union) and left.runs == _seqset(union).runs
    assert (left.los, left.his) == (_seqset(union).los, _seqset(union).his)


@given(st.lists(st.integers(0, 500), min_size=1, max_size=12), st.integers(1, 6))
def test_split_with_cuts_gives_equal_jobs(sizes: list[int], groups: int) -> None:
    """Every offset in exactly one job, job sizes equal (the last one may be smaller), and
    never two pieces of one partition in a job (a scan keys its ranges by partition)."""
    from iotpipe.query.reader import PartitionRange, split

    ranges = [PartitionRange("t", "t", p, 1000 * p + 7, 1000 * p + 7 + n, 1000 * p + 9_999)
              for p, n in enumerate(sizes) if n]
    jobs = split(ranges, groups, cut=True)
    total = sum(sizes)
    assert len(jobs) <= groups and bool(jobs) == (total > 0)
    per = [sum(r.end - r.start for r in job) for job in jobs] or [0]
    assert sum(per) == total and all(n == per[0] for n in per[:-1]) and per[-1] <= per[0]
    for job in jobs:
        assert len({r.partition for r in job}) == len(job)
        assert all(r.end > r.start for r in job)
    for r in ranges:
        pieces = sorted((p for job in jobs for p in job if p.partition == r.partition),
                        key=lambda p: p.start)
        assert pieces[0].start == r.start and pieces[-1].end == r.end
        assert all(a.end == b.start for a, b in itertools.pairwise(pieces))
        # the end's timestamp is known only where a piece ends where the range did
        assert [p.end_stamp for p in pieces] == [None] * (len(pieces) - 1) + [r.end_stamp]


@st.composite
def fleet_batches(draw: st.DrawFn) -> tuple[list[list[tuple[bytes, int, int, int]]], int, int]:
    """Readings of a fleet sent in a repeating order (a rotation, the fast path's case, or one
    where a device comes twice), then edited: repeats, swaps and gaps (which must take the
    step-by-step path), cut into batches."""
    order = draw(st.lists(st.integers(0, 3), min_size=1, max_size=6))
    rounds = draw(st.integers(1, 40))
    nxt = dict(enumerate(draw(st.lists(st.integers(0, 5), min_size=4, max_size=4))))
    rows = []
    for i in range(len(order) * rounds):
        d = order[i % len(order)]
        rows.append((b"d%d" % d, nxt[d], i, i % 7))
        nxt[d] += 1
    for op, i, j in draw(st.lists(st.tuples(st.sampled_from(["repeat", "swap", "drop"]),
                                            st.integers(0, 10**4), st.integers(0, 10**4)),
                                  max_size=3)):
        i, j = i % len(rows), j % len(rows)
        if op == "repeat":
            rows.insert(j, rows[i])
        elif op == "swap":
            rows[i], rows[j] = rows[j], rows[i]
        elif len(rows) > 1:
            del rows[i]
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=4)))
    batches = [rows[a:b] for a, b in itertools.pairwise([0, *cuts, len(rows)])]
    lo = draw(st.integers(0, 20))
    return batches, lo, lo + draw(st.integers(0, len(rows)))


@given(fleet_batches(), st.booleans())
def test_add_readings_counts_each_reading_once(case: tuple, stamped: bool) -> None:
    """Batch by batch, against a set of (device, seq): the rotation fast path and the step by
    step path agree with it on what counts, what repeats, and what is remembered."""
    _check_against_a_set(*case, stamped)


def _rows(devices: list[bytes], seqs: list[int]) -> list[tuple[bytes, int, int, int]]:
    return [(d, q, 0, q % 5) for d, q in zip(devices, seqs, strict=True)]


@pytest.mark.parametrize("rows", [
    # a device twice per turn, its two slices overlapping: 5 repeats, not a rotation
    _rows([b"a", b"x", b"x"] * 8, [q for i in range(8) for q in (i, 100 + i, 103 + i)]),
    # no fixed order, though every other reading goes on by one: b and c are not one device
    _rows([b"a", b"b", b"a", b"c"] * 8,
          [q for i in range(8) for q in (2 * i, 2 * i, 2 * i + 1, 2 * i + 1)]),
])
def test_add_readings_refuses_lookalike_rotations(rows: list) -> None:
    _check_against_a_set([rows], 0, 0, False)


def _check_against_a_set(batches: list[list[tuple[bytes, int, int, int]]], lo: int, hi: int,
                         stamped: bool) -> None:
    agg, seen, counted = WindowAggregate(), {}, set()
    want = WindowAggregate()
    for batch in batches:
        devices, seqs, ts, vals = ([list(col) for col in zip(*batch, strict=True)]
                                   if batch else ([], [], [], []))
        # without stamps the caller vouches that every reading is inside the window
        agg.add_readings(seen, lo, hi, devices, seqs, ts if stamped else None, vals)
        for device, seq, t, v in batch:
            if stamped and not lo <= t <= hi:
                continue
            if (device, seq) in counted:
                want.duplicates += 1
            else:
                counted.add((device, seq))
                want.add(v)
    assert (agg.count, agg.duplicates, agg.total) == (want.count, want.duplicates, want.total)
    assert (agg.minimum, agg.maximum) == (want.minimum, want.maximum)
    assert {(d, q) for d, s in seen.items() for q in _members(s)} == counted


def _members(s: SeqSet) -> set[int]:
    return {q for lo, hi in zip(s.los, s.his, strict=True) for q in range(lo, hi + 1)}


def test_rotation_path_takes_the_window_caches_arrays() -> None:
    """The window cache keeps seqs in an array: its rotations take the bulk path too."""
    seen: dict[bytes, SeqSet] = {}
    seqs = array("q", [q for i in range(8) for q in (10 + i, 50 + i)])
    assert note_rotation(seen, [b"a", b"b"] * 8, seqs)
    assert {d: (s.los, s.his) for d, s in seen.items()} == {b"a": ([10], [17]),
                                                           b"b": ([50], [57])}
