"""The Spark Structured Streaming job: Kafka source -> wire format -> watermark + de-duplication
-> per-sensor totals and event-time windows, folded per micro-batch into a `StreamState`.

Readings are decoded by the wire module itself, an Arrow batch at a time
(`iotpipe.stream.decode`), so the stream and the query service agree on what a valid reading is.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from iotpipe.core.settings import Settings
from iotpipe.stream.decode import decode
from iotpipe.stream.rollups import RollupPublisher
from iotpipe.stream.state import BatchRow, BucketStats, StateStore

log = logging.getLogger("iotpipe.stream")
SCAN_TASKS = 2  # local[2]

MAX_OFFSETS_PER_TRIGGER = 200_000  # per sensor: a backlog is read in bounded micro-batches
KAFKA_CONSUMER = {
    # Spark's Kafka consumer polls one partition at a time for the records of a task: the
    # default of 500 records per poll makes a micro-batch of a backlog thousands of polls
    "max.poll.records": "20000",
    # readings of aborted transactions count nowhere, as in the query service (the Java
    # client's default reads them)
    "isolation.level": "read_committed",
}
ROCKSDB_PROVIDER = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
ROCKSDB_MEMORY_MB = 256  # all state stores together (native memory, in the pod's overhead)


def under_spark_submit() -> bool:
    """spark-submit (the Spark Operator) starts the JVM first and hands us its gateway."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_session(settings: Settings, jars: list[str]) -> SparkSession:
    """Local mode sized for 2 cores; under spark-submit only the SQL settings are ours."""
    builder = SparkSession.builder.appName("iotpipe-stream")
    if not under_spark_submit():
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (builder.master(settings.spark_master)
                   .config("spark.jars", ",".join(jars))
                   .config("spark.driver.memory", "1g")
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.sql.ui.retainedExecutions", "10"))
    spark = (builder
             .config("spark.sql.shuffle.partitions", "2")
             # the de-duplication state holds every reading within the lateness: off the heap
             .config("spark.sql.streaming.stateStore.providerClass", ROCKSDB_PROVIDER)
             .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled",
                     "true")
             .config("spark.sql.streaming.stateStore.rocksdb.boundedMemoryUsage", "true")
             # counting the state's rows costs a RocksDB lookup per new key (the progress
             # reports numRowsTotal 0 instead): the de-duplication puts a key per reading
             .config("spark.sql.streaming.stateStore.rocksdb.trackTotalNumberOfRows", "false")
             .config("spark.sql.streaming.stateStore.rocksdb.maxMemoryUsageMB",
                     str(ROCKSDB_MEMORY_MB))
             .config("spark.sql.streaming.metricsEnabled", "false")
             .config("spark.sql.streaming.multipleWatermarkPolicy", "max")
             .config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _messages(spark: SparkSession, settings: Settings, sensor: str) -> DataFrame:
    reader = (spark.readStream.format("kafka")
              .option("subscribe", settings.topic(sensor))
              .option("startingOffsets", "earliest")
              .option("failOnDataLoss", "false")  # retention may delete what was never read
              .option("maxOffsetsPerTrigger", str(MAX_OFFSETS_PER_TRIGGER)))
    for key, value in (KAFKA_CONSUMER | settings.kafka.java_client_config()).items():
        reader = reader.option(f"kafka.{key}", value)
    # one task per topic partition would mean many tiny tasks per micro-batch on 2 cores
    return reader.load().coalesce(SCAN_TASKS)


def readings(spark: SparkSession, settings: Settings) -> DataFrame:
    """The de-duplicated readings stream: one branch per sensor (its own source, decoding,
    de-duplication), so Spark's own counters (input, late) come per sensor. The branches share
    one watermark (the newest reading of any sensor, as before: policy max)."""
    branches = []
    for i, sensor in enumerate(settings.sensors):
        decoded = decode(_messages(spark, settings, sensor), sensor,
                         settings.allowed_lateness_ms)
        ok, late = F.col("r.valid"), F.col("r.late")  # late: within the batch (see decode)
        observed = decoded.observe(f"input_{i}", F.count_if(ok).alias("valid"),
                                   F.count_if(~ok).alias("bad"), F.count_if(late).alias("late"))
        valid = observed.where(ok & ~late).select(
            F.lit(sensor).alias("sensor"), "r.device", "r.seq", "r.ts", "r.value", "r.exact",
            F.timestamp_millis(F.col("r.ts")).alias("event_time"))
        branches.append(
            valid.withWatermark("event_time", f"{settings.allowed_lateness_ms} milliseconds")
            .dropDuplicatesWithinWatermark(["device", "seq"]))
    return functools.reduce(DataFrame.union, branches)


def batch_rows(df: DataFrame, window_ms: int, rollup_ms: int) -> list[BatchRow]:
    """One small aggregate per micro-batch: per sensor, window and rollup bucket, collected to
    the driver (the state merges them into windows and buckets)."""
    def start(length: int) -> Column:
        return (F.floor(F.col("ts") / length) * length).cast("long")

    rows = (df.groupBy("sensor", start(window_ms).alias("ws"), start(rollup_ms).alias("bs"))
            .agg(F.count("*").alias("n"), F.sum("value").alias("total"),
                 (F.var_pop("value") * F.count("*")).alias("m2"),
                 F.min("value").alias("lo"), F.max("value").alias("hi"),
                 F.bool_and("exact").alias("ints"), F.max("ts").alias("last"),
                 # the extremes among the JSON integers: an extreme equal to one was an integer
                 F.min(F.when(F.col("exact"), F.col("value"))).alias("lo_int"),
                 F.max(F.when(F.col("exact"), F.col("value"))).alias("hi_int")).collect())
    return [BatchRow(r["sensor"], r["ws"], r["bs"],
                     BucketStats(r["n"], r["total"], r["m2"], r["lo"], r["hi"], r["ints"],
                                 r["lo_int"] == r["lo"], r["hi_int"] == r["hi"]),
                     r["last"]) for r in rows]


def progress_counters(progress: dict[str, Any], sensors: tuple[str, ...]) -> dict[str, Any]:
    """Per sensor: malformed, valid readings in and late rows of one batch; pipeline health.
    Branch i of the query is sensor i: its observation `input_i`, its i-th state operator."""
    observed = progress.get("observedMetrics", {})
    inputs = [observed.get(f"input_{i}", {}) for i in range(len(sensors))]
    operators = progress.get("stateOperators", [])
    malformed = {s: int(m.get("bad", 0)) for s, m in zip(sensors, inputs, strict=True)}
    valid = {s: int(m.get("valid", 0)) for s, m in zip(sensors, inputs, strict=True)}
    # late against an earlier batch (Spark's watermark) or within this one (the decoder)
    late = {s: int(m.get("late", 0)) for s, m in zip(sensors, inputs, strict=True)}
    for s, op in zip(sensors, operators, strict=False):
        late[s] += int(op.get("numRowsDroppedByWatermark", 0))
    behind: dict[str, int] = {}
    for source in progress.get("sources", []):
        latest, end = _offsets(source.get("latestOffset")), _offsets(source.get("endOffset"))
        for topic, parts in latest.items():
            behind[topic] = sum(max(0, o - end.get(topic, {}).get(p, 0)) for p, o in parts.items())
    health = {
        "iotpipe_stream_input_rows_per_second": float(progress.get("inputRowsPerSecond") or 0),
        "iotpipe_stream_processed_rows_per_second": float(
            progress.get("processedRowsPerSecond") or 0),
        "iotpipe_stream_batch_duration_seconds": progress.get("batchDuration", 0) / 1000,
    }
    return {"malformed": malformed, "valid": valid, "late": late, "health": health,
            "behind": behind}


def _offsets(raw: Any) -> dict[str, dict[str, int]]:
    if not raw:
        return {}
    data = json.loads(raw) if isinstance(raw, str) else raw
    return {t: {str(p): int(o) for p, o in parts.items()} for t, parts in data.items()}


def state_path(settings: Settings) -> Path:
    return Path(settings.checkpoint_dir) / "iotpipe-state.json"


def spark_checkpoint(settings: Settings) -> Path:
    return Path(settings.checkpoint_dir) / "spark"


def sensors_path(settings: Settings) -> Path:
    """The sensors Spark's checkpoint reads (see `runner.check_checkpoint`)."""
    return Path(settings.checkpoint_dir) / "iotpipe-sensors.json"


@functools.cache
def _publisher(settings: Settings) -> RollupPublisher:
    """One publisher per app, kept across restarts of the query (it makes a new producer
    itself after a failure)."""
    return RollupPublisher(settings)


def start(spark: SparkSession, settings: Settings, store: StateStore, on_batch: Any,
          available_now: bool = False) -> StreamingQuery:
    """Start the query; `on_batch(batch_id, emitted)` runs after each micro-batch is folded
    (`emitted`: readings per sensor that passed the de-duplication). A batch's rollup records
    are published before its state is saved: a crash in between replays the batch, which
    writes the same full values again."""
    deduped = readings(spark, settings)
    publisher = _publisher(settings)

    def fold(df: DataFrame, batch_id: int) -> None:
        rows = batch_rows(df, settings.window_s * 1000, settings.rollup_s * 1000)
        store.fold(batch_id, rows, publisher.publish)
        emitted: dict[str, int] = {}
        for r in rows:
            emitted[r.sensor] = emitted.get(r.sensor, 0) + r.stats.count
        on_batch(batch_id, emitted)

    writer = (deduped.writeStream.queryName("iotpipe_live_metrics").foreachBatch(fold)
              .option("checkpointLocation", str(spark_checkpoint(settings))))
    writer = (writer.trigger(availableNow=True) if available_now
              else writer.trigger(processingTime=f"{settings.trigger_s} seconds"))
    return writer.start()
