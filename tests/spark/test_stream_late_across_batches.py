"""Two micro-batches in a row, the second holding a reading late only against the first: Spark
judges a batch against the watermark two batches back, so the stream keeps it (README, rule 3);
what the stream had published as final must stay so: no bucket is written again once a progress
record called it final."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from iotpipe.core import wire
from iotpipe.core.wire import Reading
from iotpipe.stream import job
from iotpipe.stream.runner import StreamRunner
from kafka_helpers import create_topics, produce, rollup_log, settings_for, unique_prefix

T0 = 1_700_000_040_000  # a bucket boundary (60 s buckets)


@pytest.mark.spark
def test_no_bucket_is_written_again_once_final(spark: SparkSession, bootstrap: str,
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job, "MAX_OFFSETS_PER_TRIGGER", 2)  # batches of two messages
    settings = settings_for(bootstrap, unique_prefix(), sensors="temperature",
                            checkpoint_dir=str(tmp_path / "ckpt"), stream_console="false")
    assert settings.allowed_lateness_ms == 30_000 and settings.rollup_s == 60
    create_topics(settings, partitions=1)
    readings = [Reading("d0", "temperature", 0, T0, 1),
                Reading("d0", "temperature", 1, T0 + 100_000, 2),
                # next batch: stamped 80 s before the newest of the batch before it
                Reading("d1", "temperature", 0, T0 + 20_000, 50),
                Reading("d0", "temperature", 2, T0 + 100_500, 3),
                Reading("d0", "temperature", 3, T0 + 200_000, 4),
                Reading("d0", "temperature", 4, T0 + 200_500, 5)]
    produce(bootstrap, settings.topic("temperature"), readings)

    runner = StreamRunner(settings)
    query = job.start(spark, settings, runner.store, runner.on_batch, available_now=True)
    assert query.awaitTermination(300), "the availableNow query did not finish"
    assert query.exception() is None
    assert runner.store.state.batch_id >= 2  # three batches of two at least

    final, buckets = 0, {}
    for record in rollup_log(settings):
        if isinstance(record, wire.Progress):
            final = max(final, record.final)
            continue
        assert record.start + 60_000 > final, f"{record} written after it was final"
        buckets[record.start] = record
    first = buckets[T0]  # the late one is kept, in its bucket, before that was final
    assert (first.count, first.minimum, first.maximum) == (2, 1, 50)
    assert final > T0 + 60_000  # and that bucket did become final
