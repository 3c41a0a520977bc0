"""The window cache answers offset lookups and aggregates exactly as reading the partition would.

A partition is modelled as a list of messages (offsets with gaps, Kafka timestamps out of
order, duplicates, malformed ones); the reference is computed from that list directly.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.query.aggregate import SeenReadings, WindowAggregate
from iotpipe.query.range_scan import PartitionRange, RangeRows, Row
from iotpipe.query.window_cache import ASKED, Bounds, WindowCache

NEVER_LATE = 10**15  # these tests are about what memory holds, not about lateness

TOPIC, PART = "t", 0


@st.composite
def partitions(draw: st.DrawFn) -> list[Row]:
    rows: list[Row] = []
    offset, clock = draw(st.integers(0, 5)), 1000
    seqs: dict[str, int] = {}
    for _ in range(draw(st.integers(0, 60))):
        offset += draw(st.integers(1, 3))  # gaps: control records, compaction
        clock += draw(st.integers(0, 30))
        kts = clock - draw(st.sampled_from([0, 0, 0, 45]))  # some stamped late
        if draw(st.integers(0, 9)) == 0:
            rows.append((offset, kts, None, 0, 0, draw(st.sampled_from(["not JSON", "no seq"]))))
            continue
        device = draw(st.sampled_from(["a", "b", "c"]))
        seq = seqs.get(device, 0) - draw(st.sampled_from([0, 0, 0, 1, 2]))  # repeats
        seqs[device] = max(seq, seqs.get(device, 0)) + 1
        rows.append((offset, kts, device, max(seq, 0), kts, draw(st.integers(-5, 100))))
    return rows


def first_stamped(rows: list[Row], t: int) -> int:
    return next((r[0] for r in rows if r[1] >= t), -1)


def partition_end(rows: list[Row]) -> int:
    return rows[-1][0] + 1 if rows else 0


def reference(rows: list[Row], start: int, end: int, lo: int, hi: int,
              lateness: int = NEVER_LATE) -> WindowAggregate:
    """Reading the range from the broker: late = stamped at or before the newest reading read
    before it (from the range's start) minus the lateness."""
    agg, seen, newest = WindowAggregate(scanned=end - start), set(), -(2**63)
    for offset, _, device, seq, ts, value in rows:
        if not start <= offset < end:
            continue
        if device is None:
            agg.malformed += 1
            agg.malformed_reasons[str(value)] = agg.malformed_reasons.get(str(value), 0) + 1
            continue
        late, newest = ts <= newest - lateness, max(newest, ts)
        if lo <= ts <= hi and late:
            agg.late += 1
        elif lo <= ts <= hi:
            if (device, seq) in seen:
                agg.duplicates += 1
            else:
                seen.add((device, seq))
                agg.add_many([value])  # type: ignore[list-item]
    return agg


def read_window(cache: WindowCache, rows: list[Row], lo: int, hi: int) -> WindowAggregate:
    """What the service does: bounds from memory or the 'broker', then fold what is held and
    read (and keep) what is not."""
    stop = hi + 1
    known = cache.bounds(TOPIC, PART, lo, stop)
    start = known.start if known else first_stamped(rows, lo)
    if known:
        assert known.start == first_stamped(rows, lo)
        assert known.end in (None, first_stamped(rows, stop))
    agg = WindowAggregate()
    if start < 0:
        return agg
    end = known.end if known and known.end is not None else first_stamped(rows, stop)
    end_stamp = stop if end >= 0 else None  # the end came from a timestamp lookup
    end = partition_end(rows) if end < 0 else end
    if end <= start:
        return agg
    read = cache.read(TOPIC, PART, start, end)
    if read.gap is not None:
        gap = [r for r in rows if read.gap[0] <= r[0] < read.gap[1]]
        read.fill(cache, TOPIC, PART, RangeRows(gap, end, end_stamp), lo)
    read.fold(agg, SeenReadings(), lo, hi)
    return agg


def same(a: WindowAggregate, b: WindowAggregate) -> bool:
    keys = ("count", "total", "minimum", "maximum", "scanned", "malformed", "duplicates", "late",
            "malformed_reasons")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


@settings(max_examples=300, deadline=None)
@given(partitions(), st.lists(st.tuples(st.integers(900, 2900), st.integers(0, 600)),
                              min_size=1, max_size=12),
       st.sampled_from([0, 7, 40, 10_000]), st.sampled_from([NEVER_LATE, 30]))
def test_cached_windows_equal_reading_the_partition(rows: list[Row],
                                                    windows: list[tuple[int, int]],
                                                    capacity: int, lateness: int) -> None:
    cache = WindowCache(capacity, 300, lateness)
    for lo, length in windows:
        hi = lo + length
        start, stop = first_stamped(rows, lo), first_stamped(rows, hi + 1)
        end = partition_end(rows) if stop < 0 else stop
        want = (reference(rows, start, end, lo, hi, lateness) if 0 <= start < end
                else WindowAggregate())
        got = read_window(cache, rows, lo, hi)
        assert same(got, want), (lo, hi)
        assert cache.messages() <= capacity


def test_sliding_window_reads_only_new_messages() -> None:
    rows: list[Row] = [(o, 1000 + o * 10, "d", o, 1000 + o * 10, o % 7) for o in range(100)]
    cache = WindowCache(1000, 300, NEVER_LATE)
    read_window(cache, rows[:50], 1000, 1200)  # the partition had 50 messages then
    assert cache.messages() == 21
    bounds = cache.bounds(TOPIC, PART, 1100, 1301)
    assert bounds is not None and bounds.start == 10 and bounds.end is None  # end not held
    got = read_window(cache, rows, 1100, 1300)
    assert same(got, reference(rows, 10, 31, 1100, 1300))
    assert cache.messages() == 31  # one segment, extended in place
    assert cache.bounds(TOPIC, PART, 1150, 1251) == cache.bounds(TOPIC, PART, 1150, 1251)
    assert cache.bounds(TOPIC, PART, 990, 1100) is None  # before the anchor: ask the broker


def test_old_segments_are_dropped() -> None:
    """Every expired segment of a partition goes, also two next to each other."""
    rows: list[Row] = [(o, 1000 + o, "d", o, 1000 + o, 1) for o in range(10)]
    cache = WindowCache(1000, 300, NEVER_LATE)
    read_window(cache, rows, 1000, 1002)
    read_window(cache, rows, 1006, 1008)
    assert cache.bounds(TOPIC, PART, 1006, 1009) is not None
    assert cache.messages() == 6
    cache.max_age_s = -1  # (not a sleep: a loaded machine could age them out too soon)
    assert cache.bounds(TOPIC, PART, 1006, 1009) is None
    assert cache.messages() == 0


def test_least_recently_used_segment_goes_first() -> None:
    rows: list[Row] = [(o, 1000 + o * 100, "d", o, 1000 + o * 100, 1) for o in range(30)]
    cache = WindowCache(12, 300, NEVER_LATE)
    read_window(cache, rows, 1000, 1400)  # offsets 0..4
    read_window(cache, rows, 2000, 2400)  # 10..14
    read_window(cache, rows, 1000, 1400)  # touch the first
    read_window(cache, rows, 2600, 2900)  # 16..19: 14 held, over 12
    assert cache.messages() == 9
    assert cache.bounds(TOPIC, PART, 1000, 1401) is not None
    assert cache.bounds(TOPIC, PART, 2000, 2401) is None
    assert cache.bounds(TOPIC, PART, 2600, 2901) is not None


def test_a_range_whose_segment_expires_before_its_gap_is_kept_counts_each_reading_once(
) -> None:
    """The held segment expires between reading and filling the gap: the gap is appended to it
    all the same (this request folds the range from it) but not kept, and a reading repeated
    across the held part and the gap counts once."""
    seqs = [0, 1, 2, 3, 4, 5, 6, 7, 3, 8]  # offset 8 repeats seq 3 (offset 3)
    rows: list[Row] = [(o, 1000 + o * 10, "d", q, 1000 + o * 10, q) for o, q in
                       enumerate(seqs)]
    cache = WindowCache(1000, 300, NEVER_LATE)
    read_window(cache, rows, 1000, 1040)  # holds offsets [0, 5)
    read = cache.read(TOPIC, PART, 2, 10)
    assert read.gap == (5, 10) and read.seg is not None
    cache.max_age_s = -1  # the held segment is now too old to be kept
    read.fill(cache, TOPIC, PART, RangeRows(rows[5:], 10, None), 1020)
    assert cache.messages() == 0
    agg = WindowAggregate()
    read.fold(agg, SeenReadings(), 1020, 1200)
    assert same(agg, reference(rows, 2, 10, 1020, 1200))
    assert (agg.count, agg.duplicates) == (7, 1)


def test_a_range_reaching_into_a_segment_takes_it_over() -> None:
    """A range read whole, or a segment extended, up to inside the next segment: one segment
    holds both, and lateness is judged as reading it from its start."""
    rows: list[Row] = [(o, 1000 + o * 10, "d", o, 1000 + o * 10, o % 5) for o in range(40)]
    rows[12] = (12, 1055, "e", 0, 1055, 99)  # late
    cache = WindowCache(1000, 300, 45)
    for lo, hi in [(1100, 1140), (1300, 1340)]:  # offsets [10, 15) and [30, 35)
        read_window(cache, rows, lo, hi)
    assert cache.messages() == 10
    got = read_window(cache, rows, 1050, 1120)  # [5, 13): read whole, then [13, 15) taken over
    assert same(got, reference(rows, 5, 13, 1050, 1120, 45)) and got.late == 1
    assert cache.messages() == 10 + 5
    assert cache.bounds(TOPIC, PART, 1130, 1141) == Bounds(13, 15)
    got = read_window(cache, rows, 1000, 1080)  # [0, 9): read whole, then [9, 15) taken over
    assert same(got, reference(rows, 0, 9, 1000, 1080, 45))
    got = read_window(cache, rows, 1000, 1140)  # [0, 15), from memory
    assert same(got, reference(rows, 0, 15, 1000, 1140, 45))
    assert cache.messages() == 15 + 5
    got = read_window(cache, rows, 1060, 1320)  # [6, 33): extended, taking over [33, 35)
    assert same(got, reference(rows, 6, 33, 1060, 1320, 45))
    assert cache.messages() == 35  # one segment
    assert cache.bounds(TOPIC, PART, 1310, 1321) == Bounds(31, 33)
    assert cache.bounds(TOPIC, PART, 1320, 1341) == Bounds(32, 35)


def test_a_segment_grown_up_to_the_next_one_joins_it() -> None:
    """Two segments that touch would leave a range starting where the first ends read from
    the broker again: the grown one takes the next one over."""
    rows: list[Row] = [(o, 1000 + o * 10, "d", o, 1000 + o * 10, o) for o in range(20)]
    cache = WindowCache(1000, 300, NEVER_LATE)
    read_window(cache, rows, 1000, 1040)  # [0, 5)
    read_window(cache, rows, 1100, 1190)  # [10, 20)
    read_window(cache, rows, 1030, 1090)  # [3, 10): [0, 5) grows to 10, joins [10, 20)
    assert cache.messages() == 20
    assert cache.read(TOPIC, PART, 10, 20).gap is None
    assert cache.bounds(TOPIC, PART, 1100, 1191) == Bounds(10, None)  # open: ends not known


def test_a_range_kept_meanwhile_by_another_request_stays() -> None:
    """Two requests find nothing held; the one keeping a range second does not drop what the
    first kept that holds its start."""
    rows: list[Row] = [(o, 1000 + o * 10, "d", o, 1000 + o * 10, o) for o in range(100)]
    cache = WindowCache(1000, 300, NEVER_LATE)
    read = cache.read(TOPIC, PART, 50, 60)
    assert read.gap == (50, 60)
    cache.add(TOPIC, PART, 0, 100, 1000, rows, 1990)
    read.fill(cache, TOPIC, PART, RangeRows(rows[50:60], 60, 1600), 1500)
    assert cache.messages() == 100
    agg = WindowAggregate()
    read.fold(agg, SeenReadings(), 1500, 1590)
    assert same(agg, reference(rows, 50, 60, 1500, 1590))


def test_a_range_is_admitted_once_asked_again_or_touching_what_is_held() -> None:
    cache = WindowCache(1000, 300, NEVER_LATE)

    def r(start: int, end: int, partition: int = PART) -> PartitionRange:
        return PartitionRange(TOPIC, "t", partition, start, end)

    assert not cache.admits([r(100, 200)])  # first asked: read from the broker, remembered
    assert not cache.admits([r(200, 300)])  # right after it: no offset asked twice
    assert not cache.admits([r(300, 400)])  # no overlap with what was asked
    assert not cache.admits([r(150, 250, PART + 1)])  # another partition
    assert cache.admits([r(150, 250)])  # overlaps an earlier ask: a window asked again
    assert cache.admits([r(900, 950), r(390, 500)])  # one range of the part is enough
    rows: list[Row] = [(o, 1000 + o, "d", o, 1000 + o, 1) for o in range(600, 700)]
    cache.add(TOPIC, PART, 600, 700, 1000, rows)
    assert cache.admits([r(700, 760)])  # touches a held segment: extends it
    for k in range(ASKED):  # older asks are forgotten
        cache.admits([r(10_000 + 10 * k, 10_005 + 10 * k)])
    assert not cache.admits([r(160, 170)])


def test_a_gap_read_after_its_held_segment_was_dropped_judges_lateness_from_it() -> None:
    """Between a request's look at memory and the keeping of what it read past it, the held
    segment ages out (or is evicted): what was read past it is appended to it all the same (not
    kept), and judged late or not from the readings held before it, as a scan of the range
    would."""
    lateness = 30_000
    rows = [(0, 1000, "a", 0, 1000, 1), (1, 2000, "a", 1, 2000, 1),
            (2, 100_000, "b", 0, 100_000, 5),
            (3, 60_000, "c", 0, 60_000, 99),  # late: stamped 40 s before offset 2
            (4, 110_000, "a", 2, 110_000, 1), (5, 120_000, "a", 3, 120_000, 1)]
    cache = WindowCache(1000, 300, lateness)
    read_window(cache, rows[:3], 1000, 100_000)  # held: offsets [0, 3)
    read = cache.read(TOPIC, PART, 0, 6)
    assert read.gap == (3, 6)
    cache.max_age_s = -1  # the held segment ages out before the gap is kept
    read.fill(cache, TOPIC, PART, RangeRows(rows[3:], 6, None), 1000)
    got = WindowAggregate()
    read.fold(got, SeenReadings(), 1000, 130_000)
    want = reference(rows, 0, 6, 1000, 130_000, lateness)
    assert (want.count, want.late, want.maximum) == (5, 1, 5)
    assert same(got, want)


def test_a_closed_range_ends_where_memory_knows_past_a_marker() -> None:
    """The broker's lookup answered offset 10, which holds no message (a transaction marker);
    the segment held holds the first message stamped at or after the stop (15): the range is
    folded from memory up to it, not read again."""
    rows: list[Row] = [(o, 1000 + o * 10, "d", o, 1000 + o * 10, o) for o in range(20) if o != 10]
    cache = WindowCache(1000, 300, NEVER_LATE)
    cache.add(TOPIC, PART, 0, 20, 1000, rows)
    read = cache.read(TOPIC, PART, 0, 10, 1150)
    assert (read.gap, read.end) == (None, 15)
    agg = WindowAggregate()
    read.fold(agg, SeenReadings(), 1000, 1149)
    assert (agg.count, agg.total) == (14, sum(range(15)) - 10)
