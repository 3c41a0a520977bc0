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


def _report(batch_id: int, malformed: int) -> dict[str, Any]:
    """A progress report of an executed batch: `malformed` messages of the first sensor."""
    return {"batchId": batch_id, "timestamp": "2026-12-04T21:00:00.000Z",
            "durationMs": {"addBatch": 5}, "batchDuration": 10,
            "observedMetrics": {"input_0": {"valid": 0, "bad": malformed, "late": 0}},
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
