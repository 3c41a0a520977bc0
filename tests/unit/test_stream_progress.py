"""The stream's progress counters without Spark: folded from progress reports as Spark gives
them, saved with the state, and kept when a save fails."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from iotpipe.core import wire
from iotpipe.core.settings import KafkaSettings, SettingsError
from iotpipe.stream import rollups
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


def test_a_start_the_checkpoint_would_get_wrong_is_refused_in_one_line(tmp_path: Path) -> None:
    """Spark's checkpoint holds one source per sensor by position, and the state skips every
    batch id it has folded: another sensor list, or a Spark checkpoint deleted while the
    state stays (its new batches, from 0 again, would all be skipped), is refused."""
    settings = settings_for("127.0.0.1:9", checkpoint_dir=str(tmp_path))
    StreamRunner(settings)  # notes the sensors at once, not with a batch's state
    # no query has started (a start that failed before Spark did): another list is taken
    StreamRunner(replace(settings, sensors=settings.sensors[:1]))
    runner = StreamRunner(settings)
    runner.store.state.fold_batch(0, [])
    runner.store.save()  # a state of one batch
    spark = tmp_path / "spark"
    spark.mkdir()
    (spark / "metadata").write_text('{"id": "x"}')
    StreamRunner(settings)  # the same sensors, the checkpoint there: starts
    for sensors in (settings.sensors[1:], (*settings.sensors[1:], settings.sensors[0]),
                    (*settings.sensors, "wind")):
        with pytest.raises(SettingsError, match=(
                f"^IOTPIPE_SENSORS={','.join(sensors)}, but the checkpoint in {tmp_path} reads "
                f"{','.join(settings.sensors)}: set it back, or start afresh")):
            StreamRunner(replace(settings, sensors=sensors))
    (spark / "metadata").unlink()
    with pytest.raises(SettingsError, match="has counted batches up to 0, but Spark's "
                                            f"checkpoint {spark} is gone"):
        StreamRunner(settings)


@pytest.mark.parametrize("error,renewed", [(KafkaError._AUTHENTICATION, True),
                                           (KafkaError.SASL_AUTHENTICATION_FAILED, True),
                                           (KafkaError._MSG_TIMED_OUT, False)])
def test_a_publish_that_could_not_log_in_makes_a_new_producer_that_reads_the_password_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, renewed: bool) -> None:
    """A rotated password or certificate: the publisher kept across the query's restarts must
    not keep retrying with the old one. Any other failure keeps the producer, whose retries
    keep a bucket's records in order."""
    made: list[dict[str, Any]] = []

    class Undelivered:  # librdkafka's producer, as it is when it fails with `error`
        def __init__(self, config: dict[str, Any]) -> None:
            made.append(config)
            self.purged = False

        def produce(self, *args: object, **kwargs: object) -> None:
            pass

        def flush(self, timeout: float) -> int:
            made[-1]["error_cb"](KafkaError(error))
            return 1

        def purge(self) -> None:
            self.purged = True

    monkeypatch.setattr(rollups, "Producer", Undelivered)
    password = tmp_path / "password"
    password.write_text("old")
    settings = replace(settings_for("127.0.0.1:9"), kafka=KafkaSettings(
        "127.0.0.1:9", "SASL_PLAINTEXT", "SCRAM-SHA-512", "stream", str(password)))
    publisher = rollups.RollupPublisher(settings)
    first = publisher.producer
    password.write_text("new")
    with pytest.raises(rollups.RollupPublishError, match="not delivered"):
        publisher.publish([wire.Progress(0, 0, 60_000)])
    assert [c["sasl.password"] for c in made] == (["old", "new"] if renewed else ["old"])
    assert first.purged == renewed and (publisher.producer is not first) == renewed


def test_a_login_error_a_producer_overcame_does_not_make_a_new_one_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a login error during the failed publish counts (a new producer would give up the
    order of a bucket's records still in flight)."""
    made: list[dict[str, Any]] = []
    results = iter([(KafkaError._AUTHENTICATION, 0), (KafkaError._MSG_TIMED_OUT, 1)])

    class Producer:
        def __init__(self, config: dict[str, Any]) -> None:
            made.append(config)

        def produce(self, *args: object, **kwargs: object) -> None:
            pass

        def flush(self, timeout: float) -> int:
            error, left = next(results)
            made[-1]["error_cb"](KafkaError(error))
            return left

    monkeypatch.setattr(rollups, "Producer", Producer)
    publisher = rollups.RollupPublisher(settings_for("127.0.0.1:9"))
    publisher.publish([wire.Progress(0, 0, 60_000)])  # a login error, then delivered
    with pytest.raises(rollups.RollupPublishError, match="not delivered"):
        publisher.publish([wire.Progress(0, 0, 60_000)])  # timed out
    assert len(made) == 1


def test_a_state_with_a_field_this_app_lacks_still_loads(tmp_path: Path) -> None:
    """One saved by another version of the app (a field added, or one that came and went)."""
    path = tmp_path / "iotpipe-state.json"
    StateStore(path, 60_000, 30_000, 60_000).save()
    raw = json.loads(path.read_text())
    path.write_text(json.dumps(raw | {"batch_id": 4, "sensors": ["a"], "later": {"x": 1}}))
    assert StateStore(path, 60_000, 30_000, 60_000).state.batch_id == 4
