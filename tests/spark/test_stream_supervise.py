"""The streaming app's supervision: a query that fails (here a batch's callback raises, as a
rollup publish to a broker away too long does) is started again from its checkpoint in the same
process, which then goes on counting every reading once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from iotpipe.core.stopping import StopFlag
from iotpipe.core.wire import Reading
from iotpipe.stream import main
from iotpipe.stream.runner import StreamRunner
from iotpipe.stream.state import Stats
from kafka_helpers import create_topics, produce, settings_for, unique_prefix

T0 = 1_700_000_040_000


class _FailingOnce(StreamRunner):
    """Its first batch's callback raises: the query fails after that batch was folded."""

    failed: list[int]

    def on_batch(self, batch_id: int, emitted: dict[str, int]) -> None:
        if not self.failed:
            self.failed.append(batch_id)
            raise RuntimeError("a batch's callback failed (the test)")
        super().on_batch(batch_id, emitted)


@pytest.mark.spark
def test_a_failed_query_is_started_again_in_the_same_process(
        spark: SparkSession, bootstrap: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "RESTART_PAUSE_S", 0.5)
    settings = settings_for(bootstrap, unique_prefix(), sensors="temperature",
                            checkpoint_dir=str(tmp_path / "ckpt"), stream_console="false",
                            trigger_seconds="0.5")
    create_topics(settings, partitions=1)
    topic = settings.topic("temperature")
    first = [Reading("d0", "temperature", i, T0 + 100 * i, i) for i in range(30)]
    then = [Reading("d0", "temperature", i, T0 + 100 * i, i) for i in range(30, 60)]
    produce(bootstrap, topic, first)
    runner = _FailingOnce(settings)
    runner.failed = []
    stop, errors = StopFlag(), []

    def supervise() -> None:
        try:
            main._supervise(spark, settings, runner, stop)
        except BaseException as e:  # the app would exit with it
            errors.append(e)

    def counted() -> Stats:
        with runner.store.lock:
            return runner.store.state.totals.get("temperature") or Stats()

    thread = threading.Thread(target=supervise, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not runner.failed and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert runner.failed, "the first batch never ran"
        produce(bootstrap, topic, then + first[:5])  # with 5 repeats
        while counted().count < 60 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(90)
    assert not errors, f"the query's failure ended the app: {errors[0]!r}"
    assert not thread.is_alive()
    totals = counted()
    assert (totals.count, totals.total) == (60, sum(range(60)))
    assert (totals.minimum, totals.maximum) == (0, 59)
