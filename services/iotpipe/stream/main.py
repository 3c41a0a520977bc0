"""Start-up and shutdown of the streaming app (checks, Spark session, metrics server, loop)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry
from pyspark.errors import StreamingQueryException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from iotpipe.core.exporter import serve_metrics
from iotpipe.core.logs import configure_logging
from iotpipe.core.settings import Settings, SettingsError, unwritable
from iotpipe.core.stopping import POLL_S, StopFlag
from iotpipe.stream.job import build_session, start, under_spark_submit
from iotpipe.stream.runner import StreamRunner, progress_dict

log = logging.getLogger("iotpipe.stream")
RESTART_PAUSE_S = 2.0
MAX_RESTART_PAUSE_S = 30.0
# the chart gives the driver pod 90 s between SIGTERM and SIGKILL: this wait, then the batch's
# rollup publish may still wait for the broker (RollupPublisher.timeout), then Spark's stop
BATCH_END_WAIT_S = 40.0


def _check_checkpoint_dir(path: str) -> None:
    """A clear line at start-up, not a Spark stack trace loop, when the folder is unusable."""
    if (why := unwritable(Path(path))) is not None:
        raise SettingsError(f"IOTPIPE_CHECKPOINT_DIR={path}: not writable: {why}")


def main() -> None:
    stop = StopFlag()
    stop.set_on_signals()  # first: a SIGTERM during start-up is a stop request too
    try:
        settings = Settings.from_env()
        settings.kafka.check_files()
        _check_checkpoint_dir(settings.checkpoint_dir)
    except SettingsError as e:
        sys.exit(f"iotpipe stream: {e}")
    configure_logging(settings)
    jars = list(settings.spark_jars)
    if not jars and not under_spark_submit():
        from iotpipe.localstack.maven import spark_connector_jars

        jars = spark_connector_jars()
    try:
        runner = StreamRunner(settings)
    except SettingsError as e:
        sys.exit(f"iotpipe stream: {e}")
    registry = CollectorRegistry()
    registry.register(runner.collector)
    serve_metrics("stream", settings.metrics_host, settings.stream_metrics_port, registry)
    spark = build_session(settings, jars)
    log.info("streaming %s from %s; metrics on %s:%d", ", ".join(settings.sensors),
             settings.kafka.bootstrap, settings.metrics_host, settings.stream_metrics_port)
    try:
        _supervise(spark, settings, runner, stop)
    finally:
        spark.stop()
    log.info("stopped cleanly")


def _supervise(spark: SparkSession, settings: Settings, runner: StreamRunner,
               stop: StopFlag) -> None:
    """Run the query until asked to stop; if it fails (e.g. the broker went away), start it
    again from its checkpoint after a growing pause, so the app survives broker restarts."""
    pause = RESTART_PAUSE_S
    while not stop.is_set():
        query = start(spark, settings, runner.store, runner.on_batch)
        try:
            while query.isActive and not stop.is_set():
                try:
                    query.awaitTermination(0.5)  # type: ignore[arg-type]  # seconds; hinted int
                except StreamingQueryException:  # it failed meanwhile: handled below
                    break
                runner.absorb_progress(query)
                runner.publish()
                if query.lastProgress is not None:
                    pause = RESTART_PAUSE_S  # it made progress: the next failure is a new one
        finally:
            _stop_between_batches(query)
        runner.absorb_progress(query)  # its batches since the last look (a failed query's too)
        failure = query.exception()
        if failure is None or stop.is_set():
            return
        log.error("the streaming query failed (%s); restarting from the checkpoint in %gs",
                  str(failure).splitlines()[0][:300], pause)
        stop.wait(pause)
        pause = min(pause * 2, MAX_RESTART_PAUSE_S)


def _stop_between_batches(query: StreamingQuery) -> None:
    """`query.stop()` interrupts a running micro-batch: its tasks fail with ERRORs in the log
    and the batch is redone at the next start. So stop when no batch runs: the trigger is idle,
    or a batch has just been committed (a stream that is behind starts the next one at once,
    but that one is still planning). Bounded: past BATCH_END_WAIT_S, stop anyway."""
    committed = _last_batch(query)
    deadline = time.monotonic() + BATCH_END_WAIT_S
    while (query.isActive and query.status["isTriggerActive"]
           and _last_batch(query) == committed and time.monotonic() < deadline):
        time.sleep(POLL_S)
    if query.isActive:
        query.stop()


def _last_batch(query: StreamingQuery) -> int | None:
    progress = query.lastProgress
    return None if progress is None else progress_dict(progress).get("batchId")
