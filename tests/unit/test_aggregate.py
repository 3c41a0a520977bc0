"""Aggregation and de-duplication against plain references (hypothesis-generated inputs)."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.core.lateness import LateFilter
from iotpipe.query.aggregate import (
    METRICS,
    SeenReadings,
    SeqSet,
    WindowAggregate,
)

values = st.one_of(st.integers(-10**6, 10**6),
                   st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


@given(st.integers(0, 300), st.lists(st.integers(0, 300), max_size=400))
def test_seqset_matches_a_set(first: int, seqs: list[int]) -> None:
    s, ref = SeqSet(first, first), {first}
    for q in seqs:
        assert s.add(q) == (q not in ref)
        ref.add(q)
    runs = s.runs()
    assert {q for lo, hi in runs for q in range(lo, hi + 1)} == ref
    assert runs == sorted(runs)
    assert all(h + 1 < lo2 for (_, h), (lo2, _) in itertools.pairwise(runs))


def test_seqset_memory_is_bounded_by_gaps_not_readings() -> None:
    s = SeqSet(0, 0)
    for q in range(100_000):
        s.add(q)
    for q in range(200_000, 300_000, 2):
        s.add(q)
    assert len(s.los) == 1 + 50_000
    for q in range(200_001, 300_000, 2):  # fill the gaps: runs merge back into one
        s.add(q)
    assert s.runs() == [(0, 99_999), (200_000, 299_999)]


@given(st.lists(values, min_size=1, max_size=200), st.integers(1, 5), st.randoms())
def test_merged_partials_equal_the_reference(xs: list[float], parts: int, rnd) -> None:
    chunks: list[list[float]] = [[] for _ in range(parts)]
    for x in xs:
        chunks[rnd.randrange(parts)].append(x)
    total = WindowAggregate()
    for chunk in chunks:
        partial = WindowAggregate()
        partial.add_many(chunk)
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
    agg.add_many(xs)
    assert agg.metric("average") == statistics.mean(xs)
    assert type(agg.metric("average")) is type(statistics.mean(xs))
    assert agg.metric("sum") == sum(xs)


def test_variance_is_stable_for_large_offsets() -> None:
    agg = WindowAggregate()
    xs = [1e9 + v for v in (0.1, 0.2, 0.3, 0.4)] * 1000
    agg.add_many(xs)
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


def add_one(agg: WindowAggregate, value: int | float) -> None:
    """The reference: one value, step by step."""
    if agg.count == 0:
        agg.shift = value
    agg.minimum, agg.maximum = min(agg.minimum, value), max(agg.maximum, value)
    agg.count += 1
    agg.total += value
    agg.s1 += value - agg.shift
    agg.s2 += (value - agg.shift) ** 2


@given(st.lists(st.lists(st.one_of(st.integers(-10**6, 10**6),
                                   st.floats(-1e6, 1e6, allow_nan=False)), max_size=30),
                max_size=5))
def test_add_many_equals_adding_one_by_one(chunks: list[list[int | float]]) -> None:
    one, many = WindowAggregate(), WindowAggregate()
    for chunk in chunks:
        for v in chunk:
            add_one(one, v)
        many.add_many(chunk)
    assert (many.count, many.minimum, many.maximum) == (one.count, one.minimum, one.maximum)
    for name in ("sum", "average", "stddev"):
        want, got = one.metric(name), many.metric(name)
        if all(type(v) is int for chunk in chunks for v in chunk):
            assert got == want, name  # integers stay exact
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-6), name


@st.composite
def fleet_batches(draw: st.DrawFn) -> tuple[list[list[tuple[str, int, int, int]]], int, int]:
    """Readings of a few devices, each sending consecutive seqs from its own start, in any
    interleaving, then edited: repeats (next to each other and far apart), swaps and gaps;
    cut into batches."""
    devices = draw(st.integers(1, 5))
    nxt = draw(st.lists(st.integers(0, 5), min_size=devices, max_size=devices))
    rows = []
    for i, d in enumerate(draw(st.lists(st.integers(0, devices - 1), max_size=120))):
        rows.append((f"d{d}", nxt[d], i, i % 7))
        nxt[d] += 1
    for op, i, j in draw(st.lists(st.tuples(st.sampled_from(["repeat", "swap", "drop"]),
                                            st.integers(0, 10**4), st.integers(0, 10**4)),
                                  max_size=6)):
        if not rows:
            break
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


@settings(max_examples=300)
@given(fleet_batches(), st.integers(0, 40))
def test_add_readings_counts_each_reading_once(case: tuple, lateness: int) -> None:
    """Batch by batch, against a set of (device, seq): what counts, what repeats, what came
    late (stamped at or before the newest stamp before it minus the lateness), and what is
    remembered."""
    _check_against_a_set(*case, lateness)


def _check_against_a_set(batches: list[list[tuple[str, int, int, int]]], lo: int, hi: int,
                         lateness: int) -> None:
    agg, seen, late, counted = WindowAggregate(), SeenReadings(), LateFilter(lateness), set()
    want, newest = WindowAggregate(), -(2**63)
    for batch in batches:
        devices, seqs, ts, vals = ([list(col) for col in zip(*batch, strict=True)]
                                   if batch else ([], [], [], []))
        agg.add_readings(seen, late.on_time(ts), lo, hi, devices, seqs, ts, vals)
        for device, seq, t, v in batch:
            on_time, newest = t > newest - lateness, max(newest, t)
            if not lo <= t <= hi:
                continue
            if not on_time:
                want.late += 1
            elif (device, seq) in counted:
                want.duplicates += 1
            else:
                counted.add((device, seq))
                add_one(want, v)
    assert ((agg.count, agg.duplicates, agg.late, agg.total)
            == (want.count, want.duplicates, want.late, want.total))
    assert (agg.minimum, agg.maximum) == (want.minimum, want.maximum)
    assert _members(seen) == counted
    assert sorted(seen.devices()) == sorted({d for d, _ in counted})


def _members(seen: SeenReadings) -> set[tuple[str, int]]:
    runs = [(d, seen.firsts[d], last) for d, last in seen.lasts.items()]
    runs += [(d, lo, hi) for d, s in seen.sets.items() for lo, hi in s.runs()]
    return {(d, q) for d, lo, hi in runs for q in range(lo, hi + 1)}


def test_devices_in_one_run_each_keep_only_its_ends() -> None:
    """Any interleaving of devices whose seqs go on by one keeps one run per device."""
    seen = SeenReadings()
    order = [f"d{i % 97}" for i in range(97 * 50)]
    random.Random(1).shuffle(order)
    nxt: dict[str, int] = {}
    seqs = []
    for d in order:
        nxt[d] = nxt.get(d, 1000) + 1
        seqs.append(nxt[d])
    assert seen.add_all(order, seqs) == []
    assert not seen.sets and len(seen.lasts) == len(seen.firsts) == 97
    assert seen.add_all(["d5", "d5"], [1001, 999]) == [0]  # a repeat; then a gap: a SeqSet
    assert list(seen.sets) == ["d5"] and len(list(seen.devices())) == 97


def test_a_run_grows_either_way_from_one_reading() -> None:
    """A device with one reading is a run of one; readings next to its run, before or
    after, extend the run; a repeat of either end is found."""
    seen = SeenReadings()
    assert seen.add_all(["a", "b", "c"], [5, 0, 2**63 - 1]) == []
    assert seen.firsts == seen.lasts == {"a": 5, "b": 0, "c": 2**63 - 1}
    assert seen.add_all(["a", "a", "b", "a", "a", "b", "c"], [4, 6, 1, 3, 6, 0, 2**63 - 1]) == [
        4, 5, 6]
    assert not seen.sets
    assert {d: (seen.firsts[d], last) for d, last in seen.lasts.items()} == {
        "a": (3, 6), "b": (0, 1), "c": (2**63 - 1, 2**63 - 1)}


def test_integers_past_a_doubles_range_with_floats_never_raise() -> None:
    """Valid integers reach a double's range (about 1.8e308): their exact sums pass it, and
    Python raises when such an int meets a float. Sums and averages are then rounded from the
    exact value; a sum or variance past a double's range is infinite (the API's "overflowed")."""
    from fractions import Fraction

    huge = 10**308
    values: list[int | float] = [huge, huge, -1.7e308, 5, huge, 0.5]
    exact = sum(map(Fraction, values))
    for split in range(1, len(values)):
        a, b = WindowAggregate(), WindowAggregate()
        a.add_many(values[:split])
        b.add_many(values[split:])
        whole = WindowAggregate()
        whole.add_many(values)
        merged = WindowAggregate()
        merged.merge(a)
        merged.merge(b)
        for agg in (a, whole, merged):
            for metric in METRICS:
                agg.metric(metric)  # none raises
        for agg in (whole, merged):
            assert agg.count == len(values)
            assert agg.metric("sum") == pytest.approx(float(exact), rel=1e-9)
            assert agg.metric("average") == pytest.approx(float(exact / len(values)), rel=1e-9)
            assert (agg.metric("min"), agg.metric("max")) == (-1.7e308, huge)
            assert not math.isfinite(agg.metric("stddev"))  # its sums of squares overflow
    ints = WindowAggregate()
    ints.add_many([huge, huge])
    ints.add_many([1.5])
    assert ints.metric("sum") == math.inf  # 2e308 + 1.5 is past a double's range


@pytest.mark.parametrize("order", list(itertools.permutations([5.0, 5, 7.0, 7, 6.5])))
def test_an_integer_wins_a_tie_with_an_equal_float_in_any_order(
        order: tuple[int | float, ...]) -> None:
    """As the rollups answer it: an extreme given as the integer 5 and as 5.0 is 5, whether
    read in one batch, batch by batch, or merged from parts (partitions, cached segments)."""
    whole, batches, merged = WindowAggregate(), WindowAggregate(), WindowAggregate()
    whole.add_many(list(order))
    for v in order:
        batches.add_many([v])
        part = WindowAggregate()
        part.add_many([v])
        merged.merge(part)
    for agg in (whole, batches, merged):
        assert (repr(agg.metric("min")), repr(agg.metric("max"))) == ("5", "7")


@pytest.mark.parametrize("seed", range(8))
def test_integer_stddev_is_exact_whole_or_merged_from_parts(seed: int) -> None:
    """Integer readings far from zero with a small spread: merging the parts of several scans
    (partitions, reader processes) keeps the sums exact, so every way of reading them gives
    the same standard deviation as one pass, the exact one rounded (the variance once, then
    its square root: within a few units of the last place of the correctly rounded one)."""
    rng = random.Random(seed)
    xs = [10**12 + p + rng.randint(0, 4) for p in range(3) for _ in range(2000)]
    whole = WindowAggregate()
    whole.add_many(xs)
    assert math.isclose(whole.metric("stddev"), statistics.pstdev(xs), rel_tol=1e-15)
    for parts in (2, 3, 7):
        merged = WindowAggregate()
        for k in range(parts):
            part = WindowAggregate()
            part.add_many(xs[k::parts])
            merged.merge(part)
        assert merged.metric("stddev") == whole.metric("stddev"), parts
        assert merged.metric("average") == statistics.mean(xs)


@pytest.mark.parametrize("batches", [[[0, 1.5], [2 * 10**154]],
                                     [[-10**308], [1.5], [10**308]],
                                     [[7], [0.5], [10**308, 10**308]]])
def test_huge_integers_after_a_float_never_raise(batches: list[list[int | float]]) -> None:
    """A batch of integers past the range of a double's square, after a float in an earlier
    batch (the sums are doubles by then): the variance overflows to the API's "overflowed"
    rather than raising, batch by batch or merged from parts."""
    values = [v for batch in batches for v in batch]
    by_batch, merged = WindowAggregate(), WindowAggregate()
    for batch in batches:
        by_batch.add_many(batch)
        part = WindowAggregate()
        part.add_many(batch)
        merged.merge(part)
    for agg in (by_batch, merged):
        for metric in METRICS:
            agg.metric(metric)  # none raises
        assert (agg.count, agg.metric("max")) == (len(values), max(values))
        assert not math.isfinite(agg.metric("stddev"))


@pytest.mark.parametrize("order", ["backwards", "random"])
def test_seqset_adds_seqs_in_any_order(order: str) -> None:
    """One device's readings sent again backwards (or shuffled), every other seq (before, each
    was inserted at the front of the runs, at the cost of their length): the set is exactly
    what was added, repeats found, whether loose or in runs."""
    seqs = list(range(200_000, 0, -2))
    if order == "random":
        random.Random(2).shuffle(seqs)
    s = SeqSet(seqs[0], seqs[0])
    assert all(s.add(q) for q in seqs[1:]) and not any(s.add(q) for q in seqs[::1000])
    assert s.loose  # (some still loose: repeats of them found too)
    assert not any(s.add(q) for q in list(s.loose)[:100])
    assert s.runs() == [(q, q) for q in sorted(seqs)]


def test_integer_stddev_keeps_its_precision_as_readings_grow() -> None:
    """A first reading far from the rest (the sums are shifted by it) and many readings: the
    variance from the exact integer sums, not a difference of large doubles, whose error
    grows with the count."""
    xs = [0] + [10**12 + i % 3 for i in range(100_000)]
    agg = WindowAggregate()
    agg.add_many(xs)
    assert math.isclose(agg.metric("stddev"), statistics.pstdev(xs), rel_tol=1e-15)
