"""The Spark Structured Streaming job: Kafka source -> wire format -> watermark + de-duplication
-> per-sensor totals and event-time windows, folded per micro-batch into a `StreamState`.

Readings are decoded by `iotpipe.core.wire` itself (a Python UDF), so the stream and the query
service agree on what a valid reading is.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming import StreamingQuery

from iotpipe.core import wire
from iotpipe.core.settings import Settings
from iotpipe.stream.state import BatchRow, StateStore

log = logging.getLogger("iotpipe.stream")
SCAN_TASKS = 2  # local[2]

DECODED = T.StructType([
    T.StructField("sensor", T.StringType()), T.StructField("device", T.StringType()),
    T.StructField("seq", T.LongType()), T.StructField("ts", T.LongType()),
    T.StructField("value", T.DoubleType()), T.StructField("error", T.StringType())])


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
             .config("spark.sql.streaming.metricsEnabled", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _decoder(topics: dict[str, str]):
    def decode(raw: bytes | None, topic: str) -> tuple[Any, ...]:
        sensor = topics.get(topic, "")
        try:
            r = wire.decode(raw, sensor)
        except wire.MalformedReading as e:
            return (sensor, None, None, None, None, str(e).split(":")[0])
        return (sensor, r.device, r.seq, r.ts, float(r.value), None)

    return F.udf(decode, DECODED, useArrow=False)


def readings(spark: SparkSession, settings: Settings) -> tuple[DataFrame, list[str]]:
    """The de-duplicated readings stream, and the names of its observed input counters."""
    topics = {settings.topic(s): s for s in settings.sensors}
    reader = (spark.readStream.format("kafka")
              .option("subscribe", ",".join(topics))
              .option("startingOffsets", "earliest")
              .option("failOnDataLoss", "false")  # retention may delete what was never read
              .option("maxOffsetsPerTrigger", "500000"))
    for key, value in settings.kafka.java_client_config().items():
        reader = reader.option(f"kafka.{key}", value)
    # one task per topic partition would mean many tiny tasks per micro-batch on 2 cores
    decoded = reader.load().coalesce(SCAN_TASKS).select(
        F.col("topic"), _decoder(topics)(F.col("value"), F.col("topic")).alias("r"))
    counters: list[Column] = []
    names: list[str] = []
    for i, (topic, sensor) in enumerate(topics.items()):
        in_topic = F.col("topic") == topic
        counters += [F.count_if(in_topic & F.col("r.error").isNull()).alias(f"valid_{i}"),
                     F.count_if(in_topic & F.col("r.error").isNotNull()).alias(f"bad_{i}")]
        names.append(sensor)
    observed = decoded.observe("input", *counters)
    valid = observed.where(F.col("r.error").isNull()).select(
        "r.sensor", "r.device", "r.seq", "r.ts", "r.value",
        F.timestamp_millis(F.col("r.ts")).alias("event_time"))
    deduped = (valid.withWatermark("event_time", f"{settings.allowed_lateness_ms} milliseconds")
               .dropDuplicatesWithinWatermark(["sensor", "device", "seq"]))
    return deduped, names


def batch_rows(df: DataFrame, window_ms: int) -> list[BatchRow]:
    """One small aggregate per micro-batch: per sensor and window, collected to the driver."""
    start = (F.floor(F.col("ts") / window_ms) * window_ms).cast("long")
    rows = (df.groupBy("sensor", start.alias("ws"))
            .agg(F.count("*").alias("n"), F.sum("value").alias("total"),
                 F.min("value").alias("lo"), F.max("value").alias("hi"),
                 F.max("ts").alias("last")).collect())
    return [BatchRow(r["sensor"], r["ws"], r["n"], r["total"], r["lo"], r["hi"], r["last"])
            for r in rows]


def progress_counters(progress: dict[str, Any], sensors: list[str]) -> dict[str, Any]:
    """Malformed per sensor, valid readings in, late rows and pipeline health of one batch."""
    observed = progress.get("observedMetrics", {}).get("input", {})
    malformed = {s: int(observed.get(f"bad_{i}", 0)) for i, s in enumerate(sensors)}
    valid = sum(int(observed.get(f"valid_{i}", 0)) for i in range(len(sensors)))
    late = sum(int(op.get("numRowsDroppedByWatermark", 0))
               for op in progress.get("stateOperators", []))
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


def start(spark: SparkSession, settings: Settings, store: StateStore, on_batch: Any,
          available_now: bool = False) -> tuple[StreamingQuery, list[str]]:
    """Start the query; `on_batch(batch_id, emitted)` runs after each micro-batch is folded."""
    deduped, sensors = readings(spark, settings)

    def fold(df: DataFrame, batch_id: int) -> None:
        rows = batch_rows(df, settings.window_s * 1000)
        with store.lock:
            if store.state.fold_batch(batch_id, rows):
                store.save()
        on_batch(batch_id, sum(r.count for r in rows))

    writer = (deduped.writeStream.queryName("iotpipe_live_metrics").foreachBatch(fold)
              .option("checkpointLocation", str(Path(settings.checkpoint_dir) / "spark")))
    writer = (writer.trigger(availableNow=True) if available_now
              else writer.trigger(processingTime=f"{settings.trigger_s} seconds"))
    return writer.start(), sensors
