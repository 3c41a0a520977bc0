"""Rollups without Kafka or Spark: the stream state's bucket records, the query index's plan
(which part of a window each source answers) against references computed here, and the
thread that follows the topic, against a stand-in consumer."""

from __future__ import annotations

import itertools
import math
import random
import statistics
import threading
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from iotpipe.core import wire
from iotpipe.core.settings import SettingsError
from iotpipe.query import rollups
from iotpipe.query.rollups import CHUNK, RollupIndex
from iotpipe.stream.state import BatchRow, BucketStats, StateStore, Stats, StreamState
from kafka_helpers import settings_for

R = 60_000  # bucket length
LATENESS = 30_000


def _stats(values: list[float]) -> BucketStats:
    mean = sum(values) / len(values)
    lo, hi = min(values), max(values)
    return BucketStats(len(values), float(sum(values)), sum((v - mean) ** 2 for v in values),
                       lo, hi, all(type(v) is int for v in values), type(lo) is int,
                       type(hi) is int)


def _row(sensor: str, ts: list[int], values: list[float]) -> list[BatchRow]:
    """A batch's rows as Spark hands them: per (window, bucket), here both 1 minute."""
    rows = []
    for start in sorted({t // R * R for t in ts}):
        vs = [v for t, v in zip(ts, values, strict=True) if start <= t < start + R]
        rows.append(BatchRow(sensor, start, start, _stats(vs),
                             max(t for t in ts if start <= t < start + R)))
    return rows


def test_stream_state_publishes_full_buckets_and_forgets_final_ones() -> None:
    rng = random.Random(1)
    state = StreamState(window_ms=R, lateness_ms=LATENESS, rollup_ms=R)
    assert state.fold_batch(0, []) == []  # a new, empty batch: nothing rolled up yet
    assert state.fold_batch(0, []) is None  # a replay
    every: list[tuple[int, float]] = []
    newest = 0
    published: dict[int, wire.Bucket] = {}
    for batch_id in range(1, 21):
        ts = sorted(rng.randrange(batch_id * 20_000, batch_id * 20_000 + 40_000)
                    for _ in range(50))
        values = [rng.uniform(-5, 5) for _ in ts]
        every += zip(ts, values, strict=True)
        # final: the watermark before this batch (Spark judges the next against it)
        final = max(newest - LATENESS, 0)
        newest = max(newest, *ts)
        records = state.fold_batch(batch_id, _row("t", ts, values))
        assert records is not None
        assert state.fold_batch(batch_id, _row("t", ts, values)) is None  # a replay
        progress = records[-1]
        assert isinstance(progress, wire.Progress)
        assert (progress.since, progress.final, progress.bucket_ms) == (0, final, R)
        published |= {r.start: r for r in records if isinstance(r, wire.Bucket)}
        state.drop_final_buckets()
        assert all(start + R > progress.final for start in state.buckets["t"])
    for start, record in published.items():
        want = _stats([v for t, v in every if start <= t < start + R])
        assert record.count == want.count
        assert record.total == pytest.approx(want.total, rel=1e-12)
        assert record.m2 == pytest.approx(want.m2, rel=1e-9)
        assert (record.minimum, record.maximum) == (want.minimum, want.maximum)


def _record(sensor: str, start: int, b: BucketStats) -> wire.Bucket:
    return wire.Bucket(sensor, start, b.count, b.total, b.m2, b.minimum, b.maximum, b.ints,
                       b.min_int, b.max_int)


def _index(records: list[wire.Bucket | wire.Progress]) -> RollupIndex:
    index = RollupIndex(settings_for("127.0.0.1:1", rollup_seconds=str(R // 1000)))
    for record in records:  # the thread that follows the topic is not started
        index.add(record)
    return index


def test_plan_cuts_a_window_into_final_buckets_and_raw_edges() -> None:
    rng = random.Random(2)
    b = CHUNK - 200  # the buckets held straddle two chunks of the columns
    readings: dict[int, list[int | float]] = {}
    for n in range(b + 100, b + 400):
        if rng.random() < 0.8:  # some buckets have no readings: no record
            ints, floats = [rng.randrange(-9, 9) for _ in range(5)], [rng.uniform(-9, 9)
                                                                      for _ in range(4)]
            readings[n] = [ints, floats, ints[:2] + floats[:2]][n % 3]  # some buckets mixed
    final = (b + 350) * R + 12_345
    buckets = [_record("t", n * R, _stats(vs)) for n, vs in readings.items()]
    rng.shuffle(buckets)  # any order of records
    index = _index([*buckets, wire.Progress(min(readings) * R, final, R)])
    index.unreadable.add(("t", b + 200))
    for _ in range(300):
        lo = rng.randrange((b + 50) * R, (b + 420) * R)
        hi = lo + rng.randrange(0, 200 * R)
        plan = index.plan(["t", "u"], lo, hi)
        rolled = set(range(plan.first, plan.last)) - {b + 200}
        assert all(lo <= n * R and n * R + R - 1 <= hi and n * R + R <= final for n in rolled)
        assert all(n >= min(readings) for n in rolled)
        # the raw windows and the rolled buckets cover [lo, hi] once
        covered = sorted([*plan.raw, *((n * R, n * R + R - 1) for n in rolled)])
        assert covered[0][0] == lo and covered[-1][1] == hi if covered else lo > hi
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(covered))
        values = [v for n in sorted(rolled) for v in readings.get(n, [])]
        agg = plan.rolled.get("t")
        if not rolled:
            assert plan.raw == [(lo, hi)] and not plan.rolled
            continue
        assert agg is not None and agg.count == len(values)
        assert plan.rolled["u"].count == 0
        if values:
            assert agg.metric("sum") == pytest.approx(math.fsum(values), rel=1e-12, abs=1e-12)
            assert agg.metric("stddev") == pytest.approx(statistics.pstdev(values), rel=1e-9)
            assert (agg.metric("min"), agg.metric("max")) == (min(values), max(values))
            # an extreme that was an integer stays one, in mixed windows too
            assert (type(agg.metric("min")), type(agg.metric("max"))) == (
                type(min(values)), type(max(values)))
            if all(type(v) is int for v in values):
                assert type(agg.metric("sum")) is int and agg.metric("sum") == sum(values)



def test_stddev_of_buckets_far_from_the_sensors_first_level() -> None:
    """A sensor's level moves far from where its first bucket was, relative to its spread (a
    pressure sensor near 1013.25 hPa, a counter): the rolled stddev keeps the readings'
    precision (computed the plain way here, exactly, with fractions)."""
    rng = random.Random(5)
    readings = {100: [0.25, 0.75]} | {n: [1e6 + rng.uniform(-1, 1) for _ in range(6)]
                                      for n in range(101, 111)}
    readings |= {n: [1013.25 + rng.uniform(-0.05, 0.05) for _ in range(6)]
                 for n in range(111, 121)}
    index = _index([*(_record("t", n * R, _stats(vs)) for n, vs in readings.items()),
                    wire.Progress(100 * R, 200 * R, R)])
    for first, last in ((101, 111), (111, 121), (100, 121)):
        plan = index.plan(["t"], first * R, last * R - 1)
        assert (plan.first, plan.last, plan.raw) == (first, last, [])
        values = [Fraction(v) for n in range(first, last) for v in readings[n]]
        mean = sum(values) / len(values)
        want = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        assert plan.rolled["t"].metric("stddev") == pytest.approx(want, rel=1e-9)

def test_merged_buckets_keep_which_extreme_was_an_integer() -> None:
    parts = [[3, 7.5], [2.5, 7], [2, 7.0], [-1.5, 2.0]]
    for order in itertools.permutations(parts):
        merged = _stats(list(order[0]))
        for part in order[1:]:
            merged.merge(_stats(list(part)))
        assert (merged.minimum, merged.min_int) == (-1.5, False)
        assert (merged.maximum, merged.max_int) == (7.5, False)
    tie = _stats([2, 7.0])
    tie.merge(_stats([2.0, 7]))  # equal extremes, one an integer: answered as the integer
    assert (tie.min_int, tie.max_int, tie.ints) == (True, True, False)
    # in the query's index: two buckets, the extremes 5.0 and 7.0 in one and 5 and 7 in the
    # other (each with a float besides), as the readings answer them: 5 and 7
    index = _index([_record("t", 10 * R, _stats([5.0, 7.0, 6.5])),
                    _record("t", 11 * R, _stats([5, 7, 5.5])), wire.Progress(0, 20 * R, R)])
    for lo, hi in [(10 * R, 12 * R - 1), (11 * R, 12 * R - 1)]:
        rolled = index.plan(["t"], lo, hi).rolled["t"]
        assert (repr(rolled.metric("min")), repr(rolled.metric("max"))) == ("5", "7")
    old = wire.Bucket("t", 0, 2, 3.5, 1.0, 1.0, 2.5, False)  # written before the flags
    assert (old.min_int, old.max_int) == (False, False)


def test_no_progress_or_another_bucket_length_means_readings_only() -> None:
    bucket = wire.Bucket("t", 10 * R, 1, 1.0, 0.0, 1.0, 1.0, False)
    assert _index([bucket]).plan(["t"], 0, 100 * R).raw == [(0, 100 * R)]
    other = _index([bucket, wire.Progress(0, 50 * R, R // 2)])
    assert other.progress is None and other.plan(["t"], 0, 100 * R).raw == [(0, 100 * R)]


def test_edges_past_the_readings_retention_are_answered_at_bucket_precision() -> None:
    buckets = [wire.Bucket("t", n * R, 2, 2.0 * n, 0.0, n, n, True) for n in range(10, 60)]
    index = _index([*buckets, wire.Progress(10 * R, 55 * R, R)])
    lo, hi = 20 * R + 500, 30 * R + 700  # both edges inside buckets
    assert index.plan(["t"], lo, hi).raw == [(lo, 20 * R + R - 1), (30 * R, hi)]
    old = index.plan(["t"], lo, hi, expired=40 * R)  # readings of the whole window may be gone
    assert old.raw == [] and (old.first, old.last) == (20, 31) and len(old.notes) == 2
    assert old.rolled["t"].metric("count") == 22 and old.rolled["t"].metric("sum") == sum(
        2 * n for n in range(20, 31))
    half = index.plan(["t"], lo, hi, expired=25 * R)  # only the start's readings may be gone
    assert half.raw == [(30 * R, hi)] and half.first == 20 and len(half.notes) == 1
    assert index.plan(["t"], lo, hi, expired=10 * R).notes == []


def test_an_unreadable_record_stays_unreadable_when_another_sensor_rolls_that_bucket() -> None:
    """The bucket's older, readable record of `t` must not answer once its latest could not be
    read, whatever the records of other sensors for the same bucket say."""
    index = _index([_record("t", 200 * R, _stats([1, 2])), wire.Progress(100 * R, 300 * R, R)])
    index._unreadable(wire.bucket_key("t", 200 * R), "a test")
    index.add(_record("u", 200 * R, _stats([5])))
    plan = index.plan(["t", "u"], 200 * R, 201 * R - 1)
    assert plan.raw == [(200 * R, 201 * R - 1)]
    assert plan.rolled["t"].count == 0 and plan.rolled["u"].count == 0  # both read raw there
    index.add(_record("t", 200 * R, _stats([1, 2, 3])))  # a readable latest record again
    plan = index.plan(["t", "u"], 200 * R, 201 * R - 1)
    assert plan.raw == [] and plan.rolled["t"].count == 3 and plan.rolled["u"].total == 5


def test_integers_past_a_doubles_exact_range_are_summed_exactly_or_read_raw() -> None:
    big = 2**52 + 1  # a bucket of one: exact in a double; its sum with the others is not
    values = {100: [big], 101: [big], 102: [big + 2], 103: [2**53 + 1, 7],
              104: [2**53 + 1, 0.5], 105: [-(2**53) - 1, 0.5]}  # mixed: an extreme rounded
    index = _index([*(_record("t", n * R, _stats(vs)) for n, vs in values.items()),
                    wire.Progress(100 * R, 300 * R, R)])
    plan = index.plan(["t"], 100 * R, 106 * R - 1)
    # sums or extremes may have been rounded: from the readings
    assert plan.raw == [(103 * R, 106 * R - 1)]  # adjacent: one read
    agg = plan.rolled["t"]
    assert (agg.count, agg.total, agg.minimum, agg.maximum) == (3, 3 * big + 2, big, big + 2)
    assert type(agg.total) is int


class _Message:
    """A consumed rollup record, as the follower's loop sees one."""

    def __init__(self, record: wire.Bucket | wire.Progress) -> None:
        self._key, self._value = wire.encode_rollup(record)

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


def test_records_no_bucket_can_hold_are_read_from_the_readings() -> None:
    """A bucket or final mark stamped far in the future (a device clock: the mark would call
    every bucket until then final) is not believed, and a count past the column's integers
    cannot be held: each record is unreadable (its window read from the readings), the
    follower goes on, the index stays as it was."""
    now = (time.time_ns() // 1_000_000) // R * R
    future = now + 400 * 86_400_000
    index = _index([_record("t", now - 5 * R, _stats([1, 2])),
                    wire.Progress(now - 10 * R, now - R, R)])
    index._apply([_Message(wire.Bucket("t", future, 1, 9.0, 0.0, 9.0, 9.0, True)),
                  _Message(wire.Progress(now - 10 * R, future, R)),
                  _Message(wire.Bucket("t", now - 3 * R, 2**63, 1.0, 0.0, 0.5, 0.5, False)),
                  # a sensor's first record: it must not count as a bucket held, at 0
                  _Message(wire.Bucket("u", now - 3 * R, 2**63, 1.0, 0.0, 0.5, 0.5, False)),
                  _Message(_record("t", now - 4 * R, _stats([3])))])
    assert index.sensors["t"].first == now // R - 5
    assert index.progress == wire.Progress(now - 10 * R, now - R, R)
    assert index.unreadable == {("t", future // R), ("t", now // R - 3), ("u", now // R - 3)}
    assert "u" not in index.sensors
    plan = index.plan(["t"], now - 10 * R, now - R - 1)
    # before the first bucket held, and the unreadable one
    assert plan.raw == [(now - 10 * R, now - 5 * R - 1), (now - 3 * R, now - 2 * R - 1)]
    assert plan.rolled["t"].count == 3 and plan.rolled["t"].metric("max") == 3


def test_buckets_decades_apart_cost_memory_for_the_buckets_only() -> None:
    """A device whose clock starts at 1970 (no real-time clock) in the stream's first batch
    gives a bucket of 1970 beside today's: the columns hold chunks of buckets, not a slot for
    every bucket in between (over a gigabyte a sensor in every worker, once per restart)."""
    now = (time.time_ns() // 1_000_000) // R * R
    index = _index([_record("t", 5 * R, _stats([7])), _record("t", now - 3 * R, _stats([1, 2])),
                    wire.Progress(5 * R, now - R, R)])
    assert set(index.sensors["t"].chunks) == {0, (now // R - 3) // CHUNK}
    plan = index.plan(["t"], 0, now - R - 1)
    assert plan.raw == [(0, 5 * R - 1)]
    agg = plan.rolled["t"]
    assert (agg.count, agg.total, agg.minimum, agg.maximum) == (3, 10, 1, 7)
    assert agg.metric("stddev") == pytest.approx(statistics.pstdev([7, 1, 2]), rel=1e-12)
    between = index.plan(["t"], 6 * R, now - 4 * R - 1)  # rolled, and nothing in it
    assert between.raw == [] and between.rolled["t"].count == 0


def test_adjacent_parts_left_to_the_readings_are_one_read() -> None:
    index = _index([*(_record("t", n * R, _stats([n])) for n in range(10, 30)),
                    wire.Progress(10 * R, 30 * R, R)])
    index.unreadable |= {("t", 12), ("t", 13), ("t", 14), ("t", 20), ("t", 28)}
    plan = index.plan(["t"], 11 * R + 5, 30 * R + 5)
    assert plan.raw == [(11 * R + 5, 15 * R - 1), (20 * R, 21 * R - 1), (28 * R, 29 * R - 1),
                        (30 * R, 30 * R + 5)]
    rolled = [n for n in range(15, 30) if n not in (20, 28)]
    assert plan.rolled["t"].count == len(rolled)
    assert plan.rolled["t"].metric("sum") == sum(rolled)


def test_a_stream_with_another_bucket_length_than_its_rollups_refuses_to_start(
        tmp_path: Path) -> None:
    """Bucket records carry no length (the progress record does): rolling up with a new one
    over the old records would have the query read those with the new length."""
    path = tmp_path / "iotpipe-state.json"
    store = StateStore(path, R, LATENESS, R)
    assert store.state.fold_batch(0, _row("t", [5 * R + 1], [1.0])) is not None
    store.save()
    assert StateStore(path, R, LATENESS, R).state.rollups_since == 5 * R
    with pytest.raises(SettingsError, match="IOTPIPE_ROLLUP_SECONDS=30, but the rollup topic "
                                            "holds 60-second buckets"):
        StateStore(path, R, LATENESS, R // 2)


def test_a_batch_whose_state_was_not_saved_is_folded_again_when_replayed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that fails (a full disk) after the records were published: the state goes back
    to the one last saved, so Spark's replay of the batch is folded, not skipped as done."""
    store = StateStore(tmp_path / "state.json", R, LATENESS, R)
    published: list[list[wire.Bucket | wire.Progress]] = []
    store.fold(0, _row("t", [10 * R + 1, 10 * R + 2], [1.0, 2.0]), published.append)
    save = store.save

    def full_disk() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "save", full_disk)
    batch = _row("t", [10 * R + 3, 12 * R], [3.0, 4.0])
    with pytest.raises(OSError):
        store.fold(1, batch, published.append)
    assert store.state.batch_id == 0 and store.state.totals["t"].count == 2
    monkeypatch.setattr(store, "save", save)
    store.fold(1, batch, published.append)  # Spark's replay
    assert StateStore(tmp_path / "state.json", R, LATENESS, R).state.totals["t"].count == 4
    latest = {r.start: r for r in published[-1] if isinstance(r, wire.Bucket)}
    assert (latest[10 * R].count, latest[10 * R].total) == (3, 6.0)  # 2 + the replay's 1


def test_a_batch_that_failed_half_folded_is_folded_whole_when_replayed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold that raises part-way (its first row folded, then out of memory): the state goes
    back to the one last saved, so the replay does not count that row twice."""
    store = StateStore(tmp_path / "state.json", R, LATENESS, R)
    store.fold(0, _row("t", [10 * R + 1], [1.0]), lambda records: None)
    fold_batch = StreamState.fold_batch

    def out_of_memory(self: StreamState, batch_id: int, rows: list[BatchRow]) -> None:
        fold_batch(self, batch_id, rows[:1])
        raise MemoryError

    batch = _row("t", [10 * R + 2, 11 * R + 2], [2.0, 3.0])
    monkeypatch.setattr(StreamState, "fold_batch", out_of_memory)
    with pytest.raises(MemoryError):
        store.fold(1, batch, lambda records: None)
    assert store.state.batch_id == 0 and store.state.totals["t"].count == 1
    monkeypatch.setattr(StreamState, "fold_batch", fold_batch)
    store.fold(1, batch, lambda records: None)  # Spark's replay
    assert store.state.totals["t"].count == 3
    buckets = store.state.buckets["t"]
    assert {n: (b.count, b.total) for n, b in buckets.items()} == {10 * R: (2, 3.0),
                                                                   11 * R: (1, 3.0)}


def _final_never_rewritten(published: list[wire.Bucket | wire.Progress]
                           ) -> dict[int, wire.Bucket]:
    """The buckets' latest records, checking that none was written once called final."""
    final, written = 0, {}
    for record in published:
        if isinstance(record, wire.Progress):
            final = max(final, record.final)
        else:
            assert record.start + R > final, f"{record} written after it was final"
            written[record.start] = record
    return written


def test_a_shorter_lateness_after_a_restart_calls_no_bucket_final_before_spark_does(
        tmp_path: Path) -> None:
    """Spark restores its watermark from the checkpoint and raises it from the batches after
    the restart only: the state's final mark must not run ahead of it with the new, shorter
    lateness, or a reading Spark still lets in rewrites a final bucket with a partial value."""
    path = tmp_path / "state.json"
    t = 10 * R
    store = StateStore(path, R, 30_000, R)
    published: list[wire.Bucket | wire.Progress] = []
    ts = [t + 1000 * i for i in range(1, 11)] + [t + 80_000]
    store.fold(0, _row("t", ts, [1.0] * 11), published.extend)
    store = StateStore(path, R, 10_000, R)  # restarted with IOTPIPE_ALLOWED_LATENESS 10 s
    store.fold(1, _row("t", [t + 81_000], [2.0]), published.extend)
    # Spark's watermark before batch 1 was t + 50 s (80 s - 30 s): it lets t + 55 s in
    store.fold(2, _row("t", [t + 55_000], [3.0]), published.extend)
    written = _final_never_rewritten(published)
    assert (written[t].count, written[t].total) == (11, 13.0)


def _broker_away(records: object) -> None:
    raise OSError("broker away")


@pytest.mark.parametrize("failure", [None, "publish", "restart"])
def test_a_batch_replayed_with_a_longer_lateness_calls_no_bucket_final_before_spark_does(
        tmp_path: Path, failure: str | None) -> None:
    """The app stopped after batch 1's state was saved, before Spark committed it, and starts
    with a longer lateness: Spark runs batch 1 again and sets its watermark after it with the
    new lateness; the state's final mark must follow it, not the one folded with the old,
    also once the state went back to the one saved (a failed publish, another restart)."""
    path, t = tmp_path / "state.json", 10 * R
    published: list[wire.Bucket | wire.Progress] = []
    store = StateStore(path, R, 30_000, R)
    store.fold(0, _row("t", [t + 1000], [1.0]), published.extend)
    store.fold(1, _row("t", [t + 150_000], [2.0]), published.extend)
    store = StateStore(path, R, 60_000, R)  # restarted with IOTPIPE_ALLOWED_LATENESS 60 s
    store.fold(1, _row("t", [t + 150_000], [2.0]), published.extend)  # the replay: skipped
    if failure:  # the next batch's first publish fails (the state goes back to the one saved)
        with pytest.raises(OSError):
            store.fold(2, _row("t", [t + 151_000], [3.0]), _broker_away)
    if failure == "restart":
        store = StateStore(path, R, 60_000, R)
    store.fold(2, _row("t", [t + 151_000], [3.0]), published.extend)
    # Spark's watermark after batch 1 is now t + 90 s: batch 3 lets t + 100 s in
    store.fold(3, _row("t", [t + 100_000], [4.0]), published.extend)
    written = _final_never_rewritten(published)
    assert (written[t + R].count, written[t + R].total) == (1, 4.0)


def test_a_state_saved_before_rollups_begins_them_after_what_it_had_folded() -> None:
    """A state file of a version without rollups holds readings no bucket record has: the
    rollups begin with the bucket after its newest reading, not with the first one touched."""
    state = StreamState(R, LATENESS, R, batch_id=3, max_event_ms=10 * R + 5)
    state.totals["t"] = Stats(50, 50.0, 1.0, 1.0)  # 50 readings of bucket 10, never rolled up
    records = state.fold_batch(4, _row("t", [10 * R + 7, 11 * R], [1.0, 2.0]))
    assert records is not None
    assert next(r for r in records if isinstance(r, wire.Progress)).since == 11 * R


def test_a_window_is_closed_once_spark_lets_no_reading_into_it() -> None:
    """The gauges' closed window is the latest one the final mark has passed: Spark judges a
    batch against the watermark two batches back, so one only the last batch passed can
    still grow (and, pruned, would lose what it held)."""
    t = 10 * R
    state = StreamState(R, LATENESS, R)
    for batch_id, ts in enumerate([t + 10_000, t + 95_000, t + 50_000, t + 96_000]):
        assert state.fold_batch(batch_id, _row("t", [ts], [1.0])) is not None
        if batch_id == 1:  # the watermark passed the window [t, t + R), the final mark not
            assert "closed" not in state.current_and_closed("t")
    closed_start, closed = state.current_and_closed("t")["closed"]
    assert (closed_start, closed.count) == (t, 2)


class _Broker:
    """Hands the topic's two records to the first consumer only (one made after a loss reads
    nothing: a cleared index would stay empty); `list_topics` fails with `check_error`."""

    def __init__(self, check_error: int | None) -> None:
        self.records = [_Message(wire.Bucket("t", 5 * R, 2, 3.0, 0.5, 1.0, 2.0, True)),
                        _Message(wire.Progress(0, 10 * R, R))]
        self.check_error = check_error
        self.checks = 0
        self.checked_thrice = threading.Event()

    def consumer(self, config: dict[str, Any]) -> Any:
        broker = self

        class Consumer:
            def assign(self, partitions: list[Any]) -> None:
                pass

            def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
                return 0, 2

            def consume(self, n: int, timeout: float) -> list[_Message]:
                fed, broker.records = broker.records, []
                if not fed:
                    threading.Event().wait(0.01)
                return fed

            def position(self, partitions: list[Any]) -> list[Any]:
                return [SimpleNamespace(offset=2)]

            def list_topics(self, topic: str, timeout: float) -> Any:
                broker.checks += 1
                if broker.checks >= 3:
                    broker.checked_thrice.set()
                if broker.check_error is not None:
                    raise KafkaException(KafkaError(broker.check_error))
                return SimpleNamespace(topics={topic: SimpleNamespace(error=None)})

            def close(self) -> None:
                pass

        return Consumer()


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollups, "CHECK_S", 0.0)
    monkeypatch.setattr(rollups, "RETRY_S", 0.01)


@pytest.mark.usefixtures("quick")
def test_a_broker_away_for_a_while_leaves_the_index_as_it_was(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker = _Broker(KafkaError._TRANSPORT)
    monkeypatch.setattr(rollups, "Consumer", broker.consumer)
    index = RollupIndex(settings_for("127.0.0.1:1", rollup_seconds="60")).start()
    try:
        assert broker.checked_thrice.wait(5)
        plan = index.plan(["t"], 0, 10 * R - 1)
        assert plan.rolled["t"].count == 2 and plan.raw == [(0, 5 * R - 1)]
    finally:
        index.close()


@pytest.mark.usefixtures("quick")
def test_a_client_that_cannot_be_made_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """E.g. a CA file being rotated: the follower goes on, and reads once a client is made."""
    broker, attempts = _Broker(None), []

    def consumer(config: dict[str, Any]) -> Any:
        attempts.append(config)
        if len(attempts) == 1:
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "ssl.ca.location failed"))
        return broker.consumer(config)

    monkeypatch.setattr(rollups, "Consumer", consumer)
    index = RollupIndex(settings_for("127.0.0.1:1", rollup_seconds="60")).start()
    try:
        assert index.loaded.wait(5) and broker.checked_thrice.wait(5)
        assert index.plan(["t"], 0, 10 * R - 1).rolled["t"].count == 2
    finally:
        index.close()


@pytest.mark.usefixtures("quick")
def test_the_lag_gauge_says_when_no_rollups_are_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the topic is lost (deleted) no bucket is final and every window is read raw: the
    lag is +Inf, so its alert fires, rather than the last value held staying on."""
    from prometheus_client import REGISTRY

    def lag() -> float | None:
        return REGISTRY.get_sample_value("iotpipe_query_rollup_lag_seconds")

    broker = _Broker(None)
    monkeypatch.setattr(rollups, "Consumer", broker.consumer)
    index = RollupIndex(settings_for("127.0.0.1:1", rollup_seconds="60")).start()
    try:
        assert index.loaded.wait(5) and broker.checked_thrice.wait(5)
        assert lag() == pytest.approx(time.time() - 10 * R / 1000, abs=30)  # final: 10 R
        broker.check_error = KafkaError.UNKNOWN_TOPIC_OR_PART
        deadline = time.monotonic() + 5
        while lag() != math.inf:
            assert time.monotonic() < deadline, lag()
            time.sleep(0.01)
        assert index.plan(["t"], 0, 10 * R - 1).raw == [(0, 10 * R - 1)]
    finally:
        index.close()
