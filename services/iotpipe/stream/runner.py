"""Runs the streaming job: progress -> counters, gauges on HTTP, the live console table."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from typing import Any

from pyspark.sql.streaming import StreamingQuery

from iotpipe.core.settings import Settings, SettingsError
from iotpipe.stream.job import progress_counters, sensors_path, spark_checkpoint, state_path
from iotpipe.stream.metrics import StreamCollector
from iotpipe.stream.state import StateStore, Stats, StreamState, write_atomically

log = logging.getLogger("iotpipe.stream")


def progress_dict(progress: Any) -> dict[str, Any]:
    """A progress report as plain JSON data (pyspark hands out Row-valued objects)."""
    raw = getattr(progress, "json", None)
    return json.loads(raw) if isinstance(raw, str) else dict(progress)


class StreamRunner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = StateStore(state_path(settings), settings.window_s * 1000,
                                settings.allowed_lateness_ms, settings.rollup_s * 1000)
        check_checkpoint(settings, self.store.state)
        self.collector = StreamCollector()
        self._emitted: dict[int, dict[str, int]] = {}
        self._lock = threading.Lock()
        self.publish()

    def on_batch(self, batch_id: int, emitted: dict[str, int]) -> None:
        """Called from foreachBatch once the batch is folded."""
        with self._lock:
            self._emitted[batch_id] = emitted
        self.publish()
        if self.settings.stream_console:
            print(console_table(self.store.state, self.settings.sensors, batch_id), flush=True)

    def absorb_progress(self, query: StreamingQuery) -> None:
        """Fold the counters of every executed batch not folded yet (recentProgress)."""
        for raw in query.recentProgress:
            p = progress_dict(raw)
            if "addBatch" not in p.get("durationMs", {}):
                continue  # an idle report, not an executed batch
            c = progress_counters(p, self.settings.sensors)
            ts = datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp()
            c["health"]["iotpipe_stream_last_batch_timestamp_seconds"] = ts
            with self._lock:
                emitted = self._emitted.get(p["batchId"], {})
            with self.store.lock:
                if self.store.state.fold_progress(p["batchId"], c["malformed"], c["valid"],
                                                  c["late"], c["health"], c["behind"],
                                                  emitted):
                    self._save()

    def _save(self) -> None:
        """Save the counters folded, then forget what they were folded from. If the disk
        refuses, they stay in memory for the next save; if a batch's save fails meanwhile, the
        state goes back to the one saved and they are folded again from what is kept (the
        query is restarted: see main)."""
        try:
            self.store.save()
        except OSError as e:
            log.error("stream state not saved (%s): kept in memory until the next save", e)
            return
        with self._lock:
            for batch_id in [b for b in self._emitted if b <= self.store.state.progress_id]:
                del self._emitted[batch_id]

    def publish(self) -> None:
        with self.store.lock:
            snapshot = self.store.state.snapshot(self.settings.sensors)
        self.collector.publish(snapshot)


def check_checkpoint(settings: Settings, state: StreamState) -> None:
    """Refuse, with one clear line, a start that Spark's checkpoint and the state would get
    wrong: the checkpoint holds one source per sensor by position (another IOTPIPE_SENSORS
    would stop the query, or read a topic with another's offsets), and the state skips every
    batch id it has folded (a new checkpoint numbers its batches from 0 again: all skipped).
    The sensors are noted in a file of their own, at the first start: an older app's state
    loader would refuse a field it does not know (a rollback)."""
    afresh = f"or start afresh (delete the rollup topic and {settings.checkpoint_dir})"
    noted = sensors_path(settings)
    try:
        sensors = json.loads(noted.read_text())
    except FileNotFoundError:
        sensors = None
    started = (spark_checkpoint(settings) / "metadata").exists()  # a query ever started
    if started and sensors is not None and sensors != list(settings.sensors):
        raise SettingsError(
            f"IOTPIPE_SENSORS={','.join(settings.sensors)}, but the checkpoint in "
            f"{settings.checkpoint_dir} reads {','.join(sensors)}: set it back, {afresh}")
    if state.batch_id >= 0 and not started:
        raise SettingsError(
            f"{state_path(settings)} has counted batches up to {state.batch_id}, but Spark's "
            f"checkpoint {spark_checkpoint(settings)} is gone: restore it, {afresh}")
    if sensors != list(settings.sensors):  # (none yet, or no checkpoint reads them yet)
        noted.parent.mkdir(parents=True, exist_ok=True)  # (a new checkpoint: Spark's is later)
        write_atomically(noted, json.dumps(settings.sensors))


def _clock(ms: int, fmt: str) -> str:
    utc = timezone.utc  # noqa: UP017 - not datetime.UTC: the Spark image may run Python 3.10
    return datetime.fromtimestamp(max(0, ms) / 1000, tz=utc).strftime(fmt)


def console_table(state: StreamState, sensors: tuple[str, ...], batch_id: int) -> str:
    """The prototype's live console output, one compact table per batch."""
    rule = "-" * 80
    watermark = _clock(state.watermark_ms, "%Y-%m-%d %H:%M:%S")
    rollups = (_clock(state.rollups_final_ms, "%Y-%m-%d %H:%M") if state.rollups_since is not None
               else "-")
    lines = [rule, f"Batch: {batch_id}   watermark {watermark}"
             f" UTC   rollups final to {rollups}   late {sum(state.late.values())}"
             f"   duplicates {sum(state.duplicates.values())}", rule,
             f"{'sensor':<14}{'count':>9} {'min':>10} {'max':>10} {'mean':>10}"
             f" {'window':>8} {'w.count':>7} {'w.mean':>10}"]
    for sensor in sensors:
        t = state.totals.get(sensor) or Stats()
        wins = state.current_and_closed(sensor)
        start, w = wins.get("current") or wins.get("closed") or (0, Stats())
        lines.append(f"{sensor:<13} {t.count:>9} {_num(t.minimum):>10} {_num(t.maximum):>10}"
                     f" {_num(t.mean):>10} {_clock(start, '%H:%M:%S'):>8} {w.count:>7}"
                     f" {_num(w.mean):>10}")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    """Two decimals, or as a power of ten where those would not fit a column."""
    return "-" if x is None else f"{x:.2f}" if abs(x) < 1e6 else f"{x:.3e}"
