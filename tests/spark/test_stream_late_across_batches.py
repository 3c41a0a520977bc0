"""A reading late against the micro-batch just before its own: dropped by the stream, as the
query service drops it, and a bucket once published as final is never published again."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from iotpipe.core import wire
from iotpipe.core.wire import Reading
from iotpipe.stream import job
from iotpipe.stream.runner import StreamRunner
from kafka_helpers import create_topics, produce, read_rollups, settings_for, unique_prefix

T0 = 1_700_000_040_000  # a bucket boundary (60 s buckets)


@pytest.mark.spark
def test_late_against_the_batch_before_is_late(spark: SparkSession, bootstrap: str,
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job, "MAX_OFFSETS_PER_TRIGGER", 2)  # batches of two messages
    settings = settings_for(bootstrap, unique_prefix(), sensors="temperature",
                            checkpoint_dir=str(tmp_path / "ckpt"), stream_console="false")
    assert settings.allowed_lateness_ms == 30_000 and settings.rollup_s == 60
    create_topics(settings, partitions=1)
    first = [Reading("d0", "temperature", 0, T0, 1),
             Reading("d0", "temperature", 1, T0 + 100_000, 2)]
    # the first reading of the next batch is stamped 80 s before the newest of the batch
    # before: late by rule 3, though on time within its own batch
    late = Reading("d1", "temperature", 0, T0 + 20_000, 50)
    second = [late, Reading("d0", "temperature", 2, T0 + 100_500, 3)]
    produce(bootstrap, settings.topic("temperature"), first + second)

    runner = StreamRunner(settings)
    query = job.start(spark, settings, runner.store, runner.on_batch, available_now=True)
    assert query.awaitTermination(300), "the availableNow query did not finish"
    assert query.exception() is None
    runner.absorb_progress(query)

    state = runner.store.state
    assert state.batch_id >= 1  # the messages came in two micro-batches at least
    totals = state.totals["temperature"]
    assert (totals.count, totals.minimum, totals.maximum) == (3, 1, 3)
    assert state.late["temperature"] == 1
    first_bucket = read_rollups(settings)[wire.bucket_key("temperature", T0)]
    assert isinstance(first_bucket, wire.Bucket)
    assert (first_bucket.count, first_bucket.minimum, first_bucket.maximum) == (1, 1, 1)
