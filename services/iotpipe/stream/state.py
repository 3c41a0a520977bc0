"""Driver-side state of the streaming app: folded once per micro-batch, persisted atomically.

Spark de-duplicates readings (its own state, in the checkpoint) and hands every micro-batch to
`foreachBatch`; the per-sensor totals and windows are folded here and written beside the
checkpoint together with the batch id. A batch that Spark replays after a crash has an id
already folded and is skipped: nothing is counted twice, nothing is missed.
Pure Python (no Spark import) so it is tested on its own.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from iotpipe.core import wire
from iotpipe.core.moments import merged_m2
from iotpipe.core.settings import SettingsError
from iotpipe.stream.metrics import StreamSnapshot


@dataclass
class Stats:
    count: int = 0
    total: float = 0.0
    minimum: float | None = None
    maximum: float | None = None

    def fold(self, count: int, total: float, minimum: float, maximum: float) -> None:
        self.count += count
        self.total += total
        self.minimum = minimum if self.minimum is None else min(self.minimum, minimum)
        self.maximum = maximum if self.maximum is None else max(self.maximum, maximum)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass
class BucketStats:
    """A sensor's readings in one rollup bucket so far; merged batch by batch (Chan et al. for
    the sum of squared deviations, so no precision is lost to large means)."""

    count: int
    total: float
    m2: float
    minimum: float
    maximum: float
    ints: bool
    min_int: bool = False  # the minimum was a JSON integer (on a tie: one of them was)
    max_int: bool = False

    def merge(self, o: BucketStats) -> None:
        self.m2 = merged_m2(self.count, self.total / self.count, self.m2,
                            o.count, o.total / o.count, o.m2)
        self.count, self.total = self.count + o.count, self.total + o.total
        lo, hi = min(self.minimum, o.minimum), max(self.maximum, o.maximum)
        self.min_int = (self.min_int and self.minimum == lo) or (o.min_int and o.minimum == lo)
        self.max_int = (self.max_int and self.maximum == hi) or (o.max_int and o.maximum == hi)
        self.minimum, self.maximum = lo, hi
        self.ints = self.ints and o.ints


@dataclass
class BatchRow:
    """One row of a micro-batch's aggregate: a sensor's readings in one window and one rollup
    bucket (the finer of the two cuts of event time)."""

    sensor: str
    window_start_ms: int
    bucket_start_ms: int
    stats: BucketStats
    max_event_ms: int


@dataclass
class StreamState:
    window_ms: int
    lateness_ms: int
    rollup_ms: int = 60_000
    rollups_since: int | None = None  # start of the first bucket ever rolled up
    batch_id: int = -1  # last micro-batch folded
    progress_id: int = -1  # last progress report folded
    max_event_ms: int = 0
    # Spark's: the highest (a batch's newest stamp - the lateness) so far; kept, not derived
    # from max_event_ms, since Spark keeps its own across a restart with another lateness
    watermark_ms: int = -(2**63)  # (a new state: derived, see __post_init__)
    rollups_final_ms: int = 0  # see fold_batch
    totals: dict[str, Stats] = field(default_factory=dict)
    windows: dict[str, dict[int, Stats]] = field(default_factory=dict)
    malformed: dict[str, int] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    health: dict[str, float] = field(default_factory=dict)
    behind: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, dict[int, BucketStats]] = field(default_factory=dict)  # not final yet

    def __post_init__(self) -> None:
        if self.watermark_ms == -(2**63):
            self.watermark_ms = self.max_event_ms - self.lateness_ms

    def fold_batch(self, batch_id: int, rows: list[BatchRow]
                   ) -> list[wire.Bucket | wire.Progress] | None:
        """Fold one de-duplicated micro-batch; return the rollup records to publish (the full
        value of every bucket it touched, then the progress mark, once anything was rolled
        up), or None if it was folded before (a replay: nothing changed). Call
        `drop_final_buckets` once they are published."""
        if batch_id <= self.batch_id:
            if batch_id == self.batch_id and rows:
                # the last batch folded, run again by Spark (the app stopped after the state
                # was saved, before Spark committed it): Spark sets its watermark after it
                # with the lateness now set, maybe longer than when it was folded; the
                # watermark before it is `rollups_final_ms`
                self.watermark_ms = self._after(self.rollups_final_ms, rows)
            return None
        if self.rollups_since is None and self.totals:
            # a state saved before rollups existed: its buckets up to here were never
            # published, so the rollups begin at the next one
            self.rollups_since = (self.max_event_ms // self.rollup_ms + 1) * self.rollup_ms
        # the watermark before this batch: Spark drops, from the next batch on, the readings
        # at or before it (it judges a batch against the watermark two batches back, the one
        # kept for chains of stateful operators), so every bucket ending there is final
        self.rollups_final_ms = max(self.rollups_final_ms, self.watermark_ms, 0)
        touched: dict[tuple[str, int], BucketStats] = {}
        if rows:
            self.watermark_ms = self._after(self.watermark_ms, rows)
        for r in rows:
            x = r.stats
            self.totals.setdefault(r.sensor, Stats()).fold(x.count, x.total, x.minimum,
                                                             x.maximum)
            self.windows.setdefault(r.sensor, {}).setdefault(r.window_start_ms, Stats()).fold(
                x.count, x.total, x.minimum, x.maximum)
            self.max_event_ms = max(self.max_event_ms, r.max_event_ms)
            held = self.buckets.setdefault(r.sensor, {})
            if r.bucket_start_ms in held:
                held[r.bucket_start_ms].merge(x)
            else:
                held[r.bucket_start_ms] = BucketStats(**asdict(x))
            touched[(r.sensor, r.bucket_start_ms)] = held[r.bucket_start_ms]
        if touched and self.rollups_since is None:
            self.rollups_since = min(start for _, start in touched)
        self.batch_id = batch_id
        self._prune()
        records: list[wire.Bucket | wire.Progress] = [
            wire.Bucket(sensor, start, b.count, b.total, b.m2, b.minimum, b.maximum, b.ints,
                        b.min_int, b.max_int)
            for (sensor, start), b in sorted(touched.items())]
        if self.rollups_since is not None:
            records.append(wire.Progress(self.rollups_since, self.rollups_final_ms,
                                         self.rollup_ms))
        return records

    def _after(self, watermark_ms: int, rows: list[BatchRow]) -> int:
        """Spark's watermark after a batch of rows, from the one before it."""
        return max(watermark_ms, max(r.max_event_ms for r in rows) - self.lateness_ms)

    def drop_final_buckets(self) -> None:
        """Forget the buckets whose final value has been published: the state stays bounded."""
        for held in self.buckets.values():
            for start in [s for s in held if s + self.rollup_ms <= self.rollups_final_ms]:
                del held[start]

    def fold_progress(self, batch_id: int, malformed: dict[str, int], valid: dict[str, int],
                      late: dict[str, int], health: dict[str, float], behind: dict[str, int],
                      emitted: dict[str, int]) -> bool:
        """Counters of one progress report, per sensor: malformed, late (behind the watermark)
        and duplicates (valid readings in, minus late, minus readings out of the dedup)."""
        if batch_id <= self.progress_id:
            return False
        for sensor in malformed.keys() | valid.keys():
            _add(self.malformed, sensor, malformed.get(sensor, 0))
            _add(self.late, sensor, late.get(sensor, 0))
            _add(self.duplicates, sensor, max(0, valid.get(sensor, 0) - late.get(sensor, 0)
                                              - emitted.get(sensor, 0)))
        self.health, self.behind = health, behind
        self.progress_id = batch_id
        return True

    def _prune(self) -> None:
        """Keep the current window and the latest closed one of each sensor."""
        for wins in self.windows.values():
            closed = [s for s in wins if s + self.window_ms <= self.rollups_final_ms]
            for start in sorted(closed)[:-1]:
                del wins[start]

    def current_and_closed(self, sensor: str) -> dict[str, tuple[int, Stats]]:
        wins = self.windows.get(sensor, {})
        # closed: Spark admits no reading into it any more (the final mark, as for buckets)
        closed = [s for s in wins if s + self.window_ms <= self.rollups_final_ms]
        open_ = [s for s in wins if s + self.window_ms > self.rollups_final_ms]
        out = {}
        if closed:
            out["closed"] = (max(closed), wins[max(closed)])
        if open_:
            out["current"] = (max(open_), wins[max(open_)])
        return out

    def snapshot(self, sensors: tuple[str, ...], now_s: float | None = None) -> StreamSnapshot:
        snap = StreamSnapshot()
        for sensor in sensors:
            t = self.totals.get(sensor, Stats())
            snap.set("iotpipe_sensor_readings", (sensor,), t.count)
            for name, counts in (("malformed_messages", self.malformed),
                                 ("late_readings", self.late),
                                 ("duplicate_readings", self.duplicates)):
                snap.set(f"iotpipe_stream_{name}", (sensor,), counts.get(sensor, 0))
            for name, value in (("min", t.minimum), ("max", t.maximum), ("mean", t.mean)):
                if value is not None:
                    snap.set(f"iotpipe_sensor_value_{name}", (sensor,), value)
            for which, (start, w) in self.current_and_closed(sensor).items():
                labels = (sensor, which)
                snap.set("iotpipe_sensor_window_readings", labels, w.count)
                snap.set("iotpipe_sensor_window_start_seconds", labels, start / 1000)
                for name, value in (("min", w.minimum), ("max", w.maximum), ("mean", w.mean)):
                    if value is not None:
                        snap.set(f"iotpipe_sensor_window_value_{name}", labels, value)
        for name, value in self.health.items():
            snap.set(name, (), value)
        snap.set("iotpipe_stream_last_batch_id", (), self.batch_id)
        if self.rollups_since is not None:
            snap.set("iotpipe_stream_rollup_watermark_seconds", (), self.rollups_final_ms / 1000)
        if self.max_event_ms:
            now = time.time() if now_s is None else now_s
            snap.set("iotpipe_stream_event_time_lag_seconds", (),
                     max(0.0, now - self.max_event_ms / 1000))
        for topic, n in self.behind.items():
            snap.set("iotpipe_stream_kafka_offsets_behind", (topic,), n)
        return snap


def _add(counts: dict[str, int], key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


class StateStore:
    """Loads and saves a StreamState as JSON next to the Spark checkpoint (atomic replace)."""

    def __init__(self, path: Path, window_ms: int, lateness_ms: int, rollup_ms: int) -> None:
        self.path = path
        self.lock = threading.Lock()
        self._sizes = (window_ms, lateness_ms, rollup_ms)
        self.state = self._load()

    def fold(self, batch_id: int, rows: list[BatchRow],
             publish: Callable[[list[wire.Bucket | wire.Progress]], None]) -> None:
        """Fold a micro-batch, publish its rollup records, save. If any step fails, the state
        goes back to the one last saved: Spark runs the batch again, and it must not find it
        folded already (its readings would be lost)."""
        with self.lock:
            try:
                watermark = self.state.watermark_ms
                records = self.state.fold_batch(batch_id, rows)
                if records is None:  # folded and saved before: a replay
                    if self.state.watermark_ms != watermark:  # set with a longer lateness now:
                        self.save()  # kept, should the state go back to the one saved
                    return
                publish(records)
                self.state.drop_final_buckets()
                self.save()
            except BaseException:
                self.state = self._load()
                raise

    def _load(self) -> StreamState:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return StreamState(*self._sizes)
        rolled, rollup_ms = raw.get("rollup_ms", self._sizes[2]), self._sizes[2]
        if rolled != rollup_ms and raw.get("rollups_since") is not None:
            # its buckets' records carry no length: the query would read them with the new one
            raise SettingsError(
                f"IOTPIPE_ROLLUP_SECONDS={rollup_ms // 1000}, but the rollup topic holds "
                f"{rolled // 1000}-second buckets of this stream ({self.path}): set it back, "
                "or start afresh (delete the rollup topic and IOTPIPE_CHECKPOINT_DIR)")
        nested = ("totals", "windows", "buckets", "window_ms", "lateness_ms", "rollup_ms")
        # a field another version of the app saved and this one lacks is dropped
        known = {f.name for f in fields(StreamState)}
        kept = {k: v for k, v in raw.items() if k not in nested and k in known}
        # saved before the watermark was: Spark's, restored by it, came from the lateness then
        kept.setdefault("watermark_ms", raw.get("max_event_ms", 0)
                        - raw.get("lateness_ms", self._sizes[1]))
        state = StreamState(*self._sizes, **kept)
        state.totals = {s: Stats(**v) for s, v in raw["totals"].items()}
        state.windows = {s: {int(k): Stats(**v) for k, v in w.items()}
                         for s, w in raw["windows"].items()}
        state.buckets = {s: {int(k): BucketStats(**v) for k, v in b.items()}
                         for s, b in raw.get("buckets", {}).items()}
        return state

    def save(self) -> None:
        write_atomically(self.path, json.dumps(asdict(self.state)))


def write_atomically(path: Path, text: str) -> None:
    """`path` holds `text` whole, or what it held before (a crash never leaves half of it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
