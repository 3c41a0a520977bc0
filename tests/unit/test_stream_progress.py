"""The stream's progress counters without Spark: folded from progress reports as Spark gives
them, saved with the state, and kept when a save fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from iotpipe.stream.job import state_path
from iotpipe.stream.runner import StreamRunner
from iotpipe.stream.state import StateStore
from kafka_helpers import settings_for


class _Query:
    def __init__(self, reports: list[dict[str, Any]]) -> None:
        self.recentProgress = reports


def _report(batch_id: int, malformed: int, valid: int = 0) -> dict[str, Any]:
    """A progress report of an executed batch: `malformed` messages and `valid` readings of
    the first sensor."""
    return {"batchId": batch_id, "timestamp": "2026-12-04T21:00:00.000Z",
            "durationMs": {"addBatch": 5}, "batchDuration": 10,
            "observedMetrics": {"input_0": {"valid": valid, "bad": malformed, "late": 0}},
            "stateOperators": [], "sources": []}


def test_counters_a_full_disk_did_not_save_are_kept_for_the_next_save(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save of the counters that fails (ENOSPC) is logged, not raised: the app goes on
    (its batches' own saves fail too and restart the query) and the counters stay."""
    settings = settings_for("127.0.0.1:9", checkpoint_dir=str(tmp_path))
    sensor = settings.sensors[0]
    runner = StreamRunner(settings)

    def full_disk() -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(runner.store, "save", full_disk)
        runner.absorb_progress(_Query([_report(0, 2)]))
    assert runner.store.state.malformed[sensor] == 2
    assert not state_path(settings).exists()
    runner.absorb_progress(_Query([_report(0, 2), _report(1, 3)]))
    saved = StateStore(state_path(settings), 60_000, 30_000, 60_000).state
    assert (saved.progress_id, saved.malformed[sensor]) == (1, 5)


def test_counters_lost_with_a_failed_batch_are_folded_again_without_false_duplicates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counters of batch 0 were not saved, then batch 1's save failed too: the state
    goes back to the one saved, and batch 0's report is folded again with the readings it
    emitted (not counted as duplicates: none was)."""
    settings = settings_for("127.0.0.1:9", checkpoint_dir=str(tmp_path),
                            stream_console="false")
    sensor = settings.sensors[0]
    runner = StreamRunner(settings)
    runner.on_batch(0, {sensor: 5})

    def full_disk() -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(runner.store, "save", full_disk)
        runner.absorb_progress(_Query([_report(0, 0, valid=5)]))
        with pytest.raises(OSError):
            runner.store.fold(1, [], lambda records: None)
    assert runner.store.state.progress_id == -1  # back to the state saved
    runner.absorb_progress(_Query([_report(0, 0, valid=5)]))
    saved = StateStore(state_path(settings), 60_000, 30_000, 60_000).state
    assert (saved.progress_id, saved.duplicates[sensor]) == (0, 0)
