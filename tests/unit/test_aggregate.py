"""Aggregation and de-duplication against plain references (hypothesis-generated inputs)."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.query.aggregate import SeqSet, WindowAggregate

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
