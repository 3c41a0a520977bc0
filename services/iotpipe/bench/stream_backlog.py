"""Backlog catch-up: readings already in the topics, folded by our stream job and by a plain
native Spark pipeline of the same shape, each in a fresh process (`python -m
iotpipe.bench.stream_backlog ours|native BOOTSTRAP PREFIX CHECKPOINT` prints one JSON line).

Rate = readings / (end of the last micro-batch - start of the first): JVM start-up and query
planning before the first batch are left out, the first batch's own work is in.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from iotpipe.core import wire
from iotpipe.core.settings import Settings
from iotpipe.localstack.topics import ensure_topics

NATIVE_SCHEMA = "device string, sensor string, seq long, ts long, value double"


def fill(settings: Settings, per_sensor: int, devices: int, seed: int = 12) -> int:
    """`per_sensor` readings on each topic, each from one of `devices` devices drawn at random
    (each device's seq goes on by one), 5 ms of event time apart, the last one now (older
    readings would be deleted by the topics' retention)."""
    ensure_topics(settings)
    t0 = int(time.time() * 1000) - per_sensor * 5
    producer = Producer(settings.kafka.client_config() | {
        "linger.ms": 50, "batch.size": 1_000_000, "queue.buffering.max.messages": 2_000_000})
    rng = random.Random(seed)
    for sensor in settings.sensors:
        topic, seqs = settings.topic(sensor), [0] * devices
        for i in range(per_sensor):
            d = rng.randrange(devices)
            r = wire.Reading(f"{sensor}-{d}", sensor, seqs[d], t0 + i * 5, rng.randrange(101))
            seqs[d] += 1
            producer.produce(topic, wire.encode(r), wire.key(r), timestamp=r.ts)
            producer.poll(0)
    left = producer.flush(120)
    assert left == 0, f"{left} readings not acknowledged"
    return per_sensor * len(settings.sensors)


def _native(spark: SparkSession, settings: Settings) -> StreamingQuery:
    """Kafka source -> from_json -> watermark -> dropDuplicatesWithinWatermark -> per-sensor
    window aggregates collected in foreachBatch: the plainest pipeline of our job's shape."""
    from iotpipe.stream.job import MAX_OFFSETS_PER_TRIGGER, batch_rows

    window_ms = settings.window_s * 1000
    reader = (spark.readStream.format("kafka")
              .option("subscribe", ",".join(settings.topic(s) for s in settings.sensors))
              .option("startingOffsets", "earliest")
              .option("maxOffsetsPerTrigger",
                      str(MAX_OFFSETS_PER_TRIGGER * len(settings.sensors))))
    for key, value in settings.kafka.java_client_config().items():
        reader = reader.option(f"kafka.{key}", value)
    readings = (reader.load()
                .select(F.from_json(F.col("value").cast("string"), NATIVE_SCHEMA).alias("r"))
                .select("r.*").withColumn("event_time", F.timestamp_millis("ts"))
                .withWatermark("event_time", f"{settings.allowed_lateness_ms} milliseconds")
                .dropDuplicatesWithinWatermark(["sensor", "device", "seq"]))

    def fold(df: DataFrame, _batch_id: int) -> None:
        batch_rows(df.withColumn("exact", F.lit(False)), window_ms, settings.rollup_s * 1000)

    return (readings.writeStream.foreachBatch(fold).trigger(availableNow=True)
            .option("checkpointLocation", settings.checkpoint_dir).start())


def _ours(spark: SparkSession, settings: Settings) -> StreamingQuery:
    from iotpipe.stream.job import start, state_path
    from iotpipe.stream.state import StateStore

    store = StateStore(state_path(settings), settings.window_s * 1000,
                       settings.allowed_lateness_ms, settings.rollup_s * 1000)
    return start(spark, settings, store, lambda *_: None, available_now=True)


def summary(progress: list[dict[str, Any]]) -> dict[str, Any]:
    """Readings/s from the first batch, the same after it (the first batch also pays the
    engine's warm-up: code generation, the JIT, the Python workers), and where the batches'
    time went (Spark's progress)."""
    from datetime import datetime

    def at(p: dict[str, Any]) -> float:
        return datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp()

    batches = [p for p in progress if p["numInputRows"] > 0]
    if not batches:
        raise RuntimeError(f"no batch read anything: {progress}")
    rows = sum(p["numInputRows"] for p in batches)

    def end(p: dict[str, Any]) -> float:
        return at(p) + p["durationMs"]["triggerExecution"] / 1000

    seconds = end(batches[-1]) - at(batches[0])
    first_s = end(batches[0]) - at(batches[0])
    later_rows = rows - batches[0]["numInputRows"]
    phases: dict[str, float] = {}
    for p in batches:
        for phase, ms in p["durationMs"].items():
            phases[phase] = phases.get(phase, 0) + ms / 1000
    ops = [op for p in batches for op in p.get("stateOperators", [])]

    def state_s(metric: str) -> float:
        return sum(op.get(metric, 0) for op in ops) / 1000

    return {"rows": rows, "seconds": seconds, "rate": rows / seconds, "batches": len(batches),
            "first_batch_s": first_s,
            "later_rate": later_rows / (seconds - first_s) if later_rows else math.nan,
            "phases_s": phases, "state_update_s": state_s("allUpdatesTimeMs"),
            "state_removal_s": state_s("allRemovalsTimeMs"),
            "state_commit_s": state_s("commitTimeMs")}


def main() -> None:
    pipeline, bootstrap, prefix, checkpoint = sys.argv[1:5]
    from iotpipe.localstack.maven import spark_connector_jars
    from iotpipe.stream.job import build_session

    settings = Settings.from_env({"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap,
                                  "IOTPIPE_TOPIC_PREFIX": prefix,
                                  "IOTPIPE_CHECKPOINT_DIR": checkpoint})
    spark = build_session(settings, spark_connector_jars())
    query = (_ours if pipeline == "ours" else _native)(spark, settings)
    assert query.awaitTermination(1800), "the backlog was not read within 30 min"
    assert query.exception() is None, query.exception()
    print(json.dumps(summary([json.loads(p.json) for p in query.recentProgress])), flush=True)
    spark.stop()


def run_pipeline(pipeline: str, bootstrap: str, prefix: str, tmp: Path,
                 log: Callable[[str], None]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "iotpipe.bench.stream_backlog", pipeline,
                          bootstrap, prefix, str(tmp / f"backlog-{pipeline}-{prefix}")],
                         capture_output=True, text=True, timeout=2400, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{pipeline} backlog run failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"backlog {pipeline}: {result['rows']:,} readings in {result['seconds']:.1f} s = "
        f"{result['rate']:,.0f}/s ({result['batches']} batches)")
    return result


if __name__ == "__main__":
    main()
