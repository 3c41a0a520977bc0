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
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
class BatchRow:
    """One row of a micro-batch's aggregate: a sensor's readings in one window."""

    sensor: str
    window_start_ms: int
    count: int
    total: float
    minimum: float
    maximum: float
    max_event_ms: int


@dataclass
class StreamState:
    window_ms: int
    lateness_ms: int
    batch_id: int = -1  # last micro-batch folded
    progress_id: int = -1  # last progress report folded
    max_event_ms: int = 0
    totals: dict[str, Stats] = field(default_factory=dict)
    windows: dict[str, dict[int, Stats]] = field(default_factory=dict)
    malformed: dict[str, int] = field(default_factory=dict)
    late: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    health: dict[str, float] = field(default_factory=dict)
    behind: dict[str, int] = field(default_factory=dict)

    @property
    def watermark_ms(self) -> int:
        return self.max_event_ms - self.lateness_ms

    def fold_batch(self, batch_id: int, rows: list[BatchRow]) -> bool:
        """Fold one de-duplicated micro-batch; False if it was folded before (a replay)."""
        if batch_id <= self.batch_id:
            return False
        for r in rows:
            self.totals.setdefault(r.sensor, Stats()).fold(r.count, r.total, r.minimum,
                                                             r.maximum)
            self.windows.setdefault(r.sensor, {}).setdefault(r.window_start_ms, Stats()).fold(
                r.count, r.total, r.minimum, r.maximum)
            self.max_event_ms = max(self.max_event_ms, r.max_event_ms)
        self.batch_id = batch_id
        self._prune()
        return True

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
            closed = [s for s in wins if s + self.window_ms <= self.watermark_ms]
            for start in sorted(closed)[:-1]:
                del wins[start]

    def current_and_closed(self, sensor: str) -> dict[str, tuple[int, Stats]]:
        wins = self.windows.get(sensor, {})
        closed = [s for s in wins if s + self.window_ms <= self.watermark_ms]
        open_ = [s for s in wins if s + self.window_ms > self.watermark_ms]
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

    def __init__(self, path: Path, window_ms: int, lateness_ms: int) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.state = self._load(window_ms, lateness_ms)

    def _load(self, window_ms: int, lateness_ms: int) -> StreamState:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return StreamState(window_ms, lateness_ms)
        state = StreamState(window_ms, lateness_ms, **{
            k: v for k, v in raw.items() if k not in ("totals", "windows", "window_ms",
                                                       "lateness_ms")})
        state.totals = {s: Stats(**v) for s, v in raw["totals"].items()}
        state.windows = {s: {int(k): Stats(**v) for k, v in w.items()}
                         for s, w in raw["windows"].items()}
        return state

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state)))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
