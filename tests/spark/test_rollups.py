"""Rollups end to end: the real Spark job builds them on the real broker, and the query service
answers every window the same with them as without them, and as a reference computed here.

The data follows the README's rule of what counts: readings out of order within the lateness,
repeats next to each other and seconds apart, malformed messages, and readings sent long after
their time (late beyond the lateness, in the stream's first micro-batch and in a later one:
they count on neither path), and readings in Kafka transactions, committed and aborted.
Buckets are 2 s long, so the data spans thousands of them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from flask import Flask
from pyspark.sql import SparkSession

from iotpipe.core import wire
from iotpipe.core.settings import Settings
from iotpipe.query import metrics as prom
from iotpipe.query.app import create_app
from iotpipe.query.rollups import RollupIndex
from iotpipe.query.timestamps import format_ms
from iotpipe.stream.job import start
from iotpipe.stream.runner import StreamRunner
from kafka_helpers import create_topics, produce, reference, settings_for, unique_prefix

T0 = 1_700_000_000_000  # a multiple of the 2 s buckets
SPAN_MS = 80 * 60_000  # 2,400 buckets
BUCKET_MS = 2000
ALL = ["count", "min", "max", "average", "sum", "stddev"]


@dataclass
class Rolled:
    settings: Settings
    on_time: list[wire.Reading]  # what counts, by construction
    end_ms: int  # newest reading


def _readings(sensor: str, rng: random.Random, lo: int, hi: int, seq0: int
              ) -> list[wire.Reading]:
    """4 devices sending every ~2.5 s with jitter; integers for temperature (exact sums),
    integers and decimals mixed for humidity (extremes of either kind)."""
    out = []
    for d in range(4):
        t, seq = lo + d * 300, seq0
        while t < hi:
            whole = sensor == "temperature" or (sensor == "humidity" and rng.random() < 0.5)
            value: int | float = (rng.randrange(-40, 60) if whole
                                  else round(rng.uniform(-40.5, 59.5), 3))
            out.append(wire.Reading(f"{sensor}-{d}", sensor, seq, t, value))
            t, seq = t + 2500 + rng.randrange(-400, 400), seq + 1
    return sorted(out, key=lambda r: r.ts)


def _send(bootstrap: str, settings: Settings, rng: random.Random,
          readings: list[wire.Reading], garbage: list[tuple[bytes, int]]) -> None:
    """Out of order within a few seconds, repeats next to each other and ~20 s apart, garbage."""
    for sensor in settings.sensors:
        stream: list[wire.Reading | tuple[bytes, int]] = [r for r in readings
                                                          if r.sensor == sensor]
        for i in range(0, len(stream) - 4, 5):
            j = i + rng.randrange(1, 4)
            stream[i], stream[j] = stream[j], stream[i]
        for i in rng.sample(range(len(stream) - 20), 40):
            stream.insert(i + rng.choice([1, 20]), stream[i])
        for g in garbage:
            stream.insert(rng.randrange(len(stream)), g)
        produce(bootstrap, settings.topic(sensor), stream)


def _in_transactions(bootstrap: str, settings: Settings, rng: random.Random,
                     sent: list[wire.Reading]) -> None:
    """Per sensor, a committed transaction of repeats (count once: no change) and an aborted
    one of new readings (count in no window), each leaving its marker in the topic."""
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique_prefix() + "tx"})
    p.init_transactions(30)
    for sensor in settings.sensors:
        mine = [r for r in sent if r.sensor == sensor]
        newest = max(r.ts for r in mine)  # the aborted ones on time, if they counted
        aborted = [wire.Reading(r.device, sensor, r.seq + 3 * 10**6, r.ts, 10**4)
                   for r in mine if r.ts > newest - 20_000]
        for batch, commit in ((rng.sample(mine, 20), True), (aborted, False)):
            p.begin_transaction()
            for r in batch:
                p.produce(settings.topic(sensor), wire.encode(r), wire.key(r), timestamp=r.ts)
            if commit:
                p.commit_transaction(30)
            else:  # written first: an abort drops what the producer has not sent yet
                assert p.flush(30) == 0
                p.abort_transaction(30)


def _run_stream(spark: SparkSession, settings: Settings) -> None:
    runner = StreamRunner(settings)
    query = start(spark, settings, runner.store, runner.on_batch, available_now=True)
    assert query.awaitTermination(600), "the availableNow query did not finish"
    assert query.exception() is None


@pytest.fixture(scope="module")
def rolled(spark: SparkSession, bootstrap: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Rolled:
    settings = settings_for(bootstrap, unique_prefix(), rollup_seconds="2",
                            checkpoint_dir=str(tmp_path_factory.mktemp("rollups") / "ckpt"),
                            stream_console="false", query_readers="0")
    create_topics(settings)
    rng = random.Random(13)
    garbage = [(b"not json", T0), (b'{"device":"d","sensor":"x","seq":1,"ts":1,"value":1}', T0),
               (b'{"device":"d","sensor":"temperature","seq":1,"ts":1,"value":NaN}', T0)]
    half = T0 + SPAN_MS // 2
    first = [r for s in settings.sensors for r in _readings(s, rng, T0, half, 0)]
    _send(bootstrap, settings, rng, first, garbage)
    # late within the first micro-batch: Spark's watermark has not moved yet (as for a backlog,
    # or the first batch after a restart), rule 3 still calls them late
    for sensor in settings.sensors:
        produce(bootstrap, settings.topic(sensor),
                [wire.Reading(r.device, r.sensor, r.seq + 2 * 10**6, r.ts, 10**4)
                 for r in rng.sample(first, 60) if r.sensor == sensor and r.ts < half - 60_000])
    _in_transactions(bootstrap, settings, rng, first)  # their buckets final after `second`
    _run_stream(spark, settings)
    # later: readings of minutes ago sent now (late beyond the lateness), then new ones
    late = [wire.Reading(r.device, r.sensor, r.seq + 10**6, r.ts, r.value)
            for r in rng.sample(first, 30) if r.ts < half - 120_000]
    second = [r for s in settings.sensors for r in _readings(s, rng, half, T0 + SPAN_MS, 10**5)]
    for sensor in settings.sensors:
        produce(bootstrap, settings.topic(sensor), [r for r in late if r.sensor == sensor])
    _send(bootstrap, settings, rng, second, garbage)
    _run_stream(spark, settings)
    return Rolled(settings, first + second, max(r.ts for r in second))


@pytest.fixture(scope="module")
def apps(rolled: Rolled) -> Iterator[tuple[Flask, Flask]]:
    """The query service with rollups, once its index holds them all, and without."""
    s = rolled.settings
    on = create_app(s)
    off = create_app(settings_for(s.kafka.bootstrap, s.topic_prefix, rollup_seconds="2",
                                  query_readers="0", query_rollups="false"))
    _wait_for_rollups(on, rolled)
    yield on, off
    for app in (on, off):
        app.extensions["iotpipe.service"].close()


def _wait_for_rollups(app: Flask, rolled: Rolled) -> None:
    """What a gunicorn worker waits for before it takes requests: then the index holds every
    rollup the stream wrote, not some of them."""
    index = _index(app)
    assert index.loaded.wait(60), "the rollup topic was not read within 60 s"
    final = rolled.end_ms - rolled.settings.allowed_lateness_ms
    assert index.progress is not None and index.progress.final >= final, index.progress


def _index(app: Flask) -> RollupIndex:
    index = app.extensions["iotpipe.service"].rollups
    assert index is not None
    return index


def _ask(app: Flask, sensors: tuple[str, ...], lo: int, hi: int, errors: int = 0) -> dict:
    body = {s: ALL for s in sensors} | {"from": format_ms(lo), "to": format_ms(hi)}
    resp = app.test_client().post("/compute/metrics", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    payload = resp.get_json()
    assert len(payload["errors"]) == errors, payload["errors"]
    return payload["result"] if errors == 0 else payload


def _same(got: dict, want: dict, where: str) -> None:
    for k, v in want.items():
        if k in ("min", "max"):  # an integer stays one, a decimal stays one
            assert (got[k], type(got[k])) == (v, type(v)), (where, k)
        elif isinstance(v, float) or isinstance(got[k], float):
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-9), (where, k)
        else:
            assert got[k] == v, (where, k)
            assert type(got[k]) is type(v), (where, k)  # integers stay integers


def _windows(rng: random.Random, end_ms: int) -> list[tuple[int, int]]:
    b = BUCKET_MS
    fixed = [(T0, end_ms), (T0 - 60_000, end_ms + 60_000),  # everything, beyond both ends
             (T0 + 100 * b, T0 + 1900 * b - 1),  # aligned to buckets
             (T0 + 100 * b + 777, T0 + 1900 * b + 1234),  # not aligned
             (T0 + 500 * b + 100, T0 + 500 * b + 900),  # inside one bucket
             (T0 + 500 * b, T0 + 501 * b - 1),  # exactly one bucket
             (T0 - 50_000, T0 - 1000),  # empty: before any reading
             (end_ms - 45_000, end_ms)]  # newer than the final mark: readings only
    spans = [rng.randrange(1, SPAN_MS) for _ in range(12)]
    return fixed + [(lo, lo + span) for span in spans
                    for lo in [T0 + rng.randrange(-5000, SPAN_MS - span)]]


@pytest.mark.spark
def test_rollups_answer_like_readings(rolled: Rolled, apps: tuple[Flask, Flask]) -> None:
    on, off = apps
    s = rolled.settings
    before = prom.WINDOWS.labels("rollups")._value.get()
    for lo, hi in _windows(random.Random(5), rolled.end_ms):
        with_rollups, without = _ask(on, s.sensors, lo, hi), _ask(off, s.sensors, lo, hi)
        for sensor in s.sensors:
            want = reference([r for r in rolled.on_time if r.sensor == sensor], lo, hi)
            _same(with_rollups[sensor], want, f"rollups {sensor} {lo}-{hi}")
            _same(without[sensor], want, f"readings {sensor} {lo}-{hi}")
    plan = _index(on).plan(list(s.sensors), T0, rolled.end_ms)
    assert plan.buckets > 2000 and plan.raw[-1][0] > rolled.end_ms - 60_000
    assert prom.WINDOWS.labels("rollups")._value.get() - before >= 14


@pytest.mark.spark
def test_an_unreadable_rollup_is_read_from_the_readings(rolled: Rolled,
                                                        apps: tuple[Flask, Flask]) -> None:
    on, _ = apps
    s = rolled.settings
    bucket = T0 + 700 * BUCKET_MS
    before = prom.ROLLUP_MALFORMED._value.get()
    p = Producer({"bootstrap.servers": s.kafka.bootstrap})
    p.produce(s.rollup_topic, b'{"kind":"bucket","sensor":"temperature"}',
              wire.bucket_key("temperature", bucket))
    assert p.flush(30) == 0
    index = _index(on)
    deadline = time.monotonic() + 30
    while ("temperature", bucket // BUCKET_MS) not in index.unreadable:
        assert time.monotonic() < deadline, "the bad record was not read"
        time.sleep(0.1)
    assert prom.ROLLUP_MALFORMED._value.get() == before + 1
    lo, hi = bucket - 10 * BUCKET_MS, bucket + 10 * BUCKET_MS + 500
    assert (bucket, bucket + BUCKET_MS - 1) in index.plan(list(s.sensors), lo, hi).raw
    got = _ask(on, s.sensors, lo, hi)
    for sensor in s.sensors:
        want = reference([r for r in rolled.on_time if r.sensor == sensor], lo, hi)
        _same(got[sensor], want, sensor)


@pytest.mark.spark
def test_time_past_the_readings_retention_is_answered_from_rollups(rolled: Rolled) -> None:
    """The readings topics' retention is set so that it reaches into the data (the broker
    deletes none of it: each partition's newest reading is newer), and a fresh service asked
    a window starting before it answers from the start of that bucket, and says so."""
    s = rolled.settings
    horizon = T0 + SPAN_MS // 2 + 123_456
    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap})

    def retention(ms: str) -> None:
        entry = ConfigEntry("retention.ms", ms, incremental_operation=AlterConfigOpType.SET)
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.topic(sensor),
                                    incremental_configs=[entry]) for sensor in s.sensors]
        for f in admin.incremental_alter_configs(resources).values():
            f.result(30)

    retention(str(int(time.time() * 1000) - horizon))
    app = create_app(s)
    try:
        _wait_for_rollups(app, rolled)
        lo, hi = horizon - 600_000 - 777, rolled.end_ms - 10_000
        payload = _ask(app, s.sensors, lo, hi, errors=1)
        assert "retention" in payload["errors"][0]
        assert format_ms(lo // BUCKET_MS * BUCKET_MS) in payload["errors"][0]
        for sensor in s.sensors:
            want = reference([r for r in rolled.on_time if r.sensor == sensor],
                             lo // BUCKET_MS * BUCKET_MS, hi)
            _same(payload["result"][sensor], want, sensor)
    finally:
        app.extensions["iotpipe.service"].close()
        retention("-1")


@pytest.mark.spark
def test_without_the_rollup_topic_windows_are_read_raw(rolled: Rolled,
                                                       apps: tuple[Flask, Flask],
                                                       tmp_path: Path) -> None:
    """Runs last in this module: it deletes the rollup topic."""
    on, _ = apps
    s = rolled.settings
    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap})
    admin.delete_topics([s.rollup_topic])[s.rollup_topic].result(30)
    index = _index(on)
    deadline = time.monotonic() + 60
    while index.progress is not None:
        assert time.monotonic() < deadline, "the index did not notice the deleted topic"
        time.sleep(0.2)
    lo, hi = T0 + 1234, rolled.end_ms - 4321
    assert index.plan(list(s.sensors), lo, hi).raw == [(lo, hi)]
    fresh = RollupIndex(s).start()  # a worker starting now has no topic to wait for
    try:
        assert fresh.loaded.wait(30) and fresh.progress is None
    finally:
        fresh.close()
    got = _ask(on, s.sensors, lo, hi)
    for sensor in s.sensors:
        _same(got[sensor], reference([r for r in rolled.on_time if r.sensor == sensor], lo, hi),
              sensor)
