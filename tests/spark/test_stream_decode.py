"""The stream's decoding (wire.decode_many over Arrow batches, in Spark's Python workers) gives
wire.decode's verdict and values, message by message, on generated messages, valid and
malformed, in the real Spark session."""

from __future__ import annotations

import random

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from iotpipe.core import wire
from iotpipe.stream.decode import decode
from wire_messages import SENSOR, messages

LATENESS_MS = 30_000
T0 = 1_700_000_000_000


def _frame(spark: SparkSession, rows: list[tuple[int, bytes | None, int, int]]) -> DataFrame:
    """Records as the Kafka source gives them: (i, value, partition, timestamp from epoch ms)."""
    df = spark.createDataFrame(rows, "i long, value binary, partition int, stamp long")
    return df.withColumn("timestamp", F.timestamp_millis("stamp")).drop("stamp")


def _reference(raw: bytes | None) -> tuple | None:
    """wire.decode's reading as the stream counts it (value as a double, and whether it was an
    integer), None if malformed."""
    try:
        r = wire.decode(raw, SENSOR)
    except wire.MalformedReading:
        return None
    return r.device, r.seq, r.ts, float(r.value), type(r.value) is int


@pytest.mark.spark
def test_stream_decoding_agrees_with_wire(spark: SparkSession) -> None:
    raws = messages(seed=12, n=6000)
    df = _frame(spark, [(i, raw, 0, wire.MAX_TS_MS) for i, raw in enumerate(raws)])
    rows = decode(df, SENSOR, LATENESS_MS).select("i", "r.*").orderBy("i").collect()
    assert [row["i"] for row in rows] == list(range(len(raws)))
    want = [_reference(raw) for raw in raws]
    valid = sum(w is not None for w in want)
    assert 0.3 * len(raws) < valid < 0.8 * len(raws)  # the generator makes both kinds
    wrong = []
    for raw, row, w in zip(raws, rows, want, strict=True):
        got = (row["device"], row["seq"], row["ts"], row["value"],
               row["exact"]) if row["valid"] else None
        if got != w:
            wrong.append((raw, got, w))
    assert not wrong, f"{len(wrong)} disagreements, e.g. {wrong[:5]}"


@pytest.mark.spark
def test_a_batch_of_valid_readings_only(spark: SparkSession) -> None:
    """What the sensors send: one Arrow batch with no malformed message (the decoder's fast
    path) comes back exactly, integers marked exact."""
    readings = [wire.Reading(f"d{i}", SENSOR, i, 1_700_000_000_000 + i, i / 4 if i % 2 else i)
                for i in range(200)]
    df = _frame(spark, [(i, wire.encode(r), 0, r.ts) for i, r in enumerate(readings)])
    rows = decode(df.coalesce(1), SENSOR, LATENESS_MS).select("i", "r.*").orderBy("i").collect()
    got = [(r["device"], r["seq"], r["ts"], r["value"], r["exact"], r["valid"]) for r in rows]
    assert got == [(r.device, r.seq, r.ts, float(r.value), type(r.value) is int, True)
                   for r in readings]


@pytest.mark.spark
def test_late_within_a_batch_as_the_query_judges_it(spark: SparkSession) -> None:
    """Readings of three partitions interleaved in one task: a reading is late when one stamped
    the lateness after it came before it in its own partition (rule 3, as the query's
    LateFilter), whatever the other partitions hold; malformed messages move nothing; Arrow
    batches of the task carry it on."""
    rng = random.Random(5)
    newest = {p: 0 for p in range(3)}
    rows, want = [], []
    for i in range(3000):
        p = rng.randrange(3)
        if rng.random() < 0.05:
            rows.append((i, b"not json", p, T0))
            want.append(None)
            continue
        # partition 2 runs a minute behind the others: late only against its own readings
        ts = T0 + i * 100 - (60_000 if p == 2 else 0) - rng.choice([0, 0, 0, 29_000, 31_000])
        rows.append((i, wire.encode(wire.Reading("d", SENSOR, i, ts, 1)), p, ts))
        want.append(ts <= newest[p] - LATENESS_MS)
        newest[p] = max(newest[p], ts)
    assert 50 < sum(w is True for w in want) < 600  # the data has late readings, not many
    df = _frame(spark, rows).coalesce(1)
    batch_rows = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(batch_rows)
    spark.conf.set(batch_rows, "500")  # what a partition's earlier batches left counts too
    try:
        got = [r["late"] for r in decode(df, SENSOR, LATENESS_MS).select("i", "r.late")
               .orderBy("i").collect()]
    finally:
        spark.conf.set(batch_rows, before)
    assert got == want


@pytest.mark.spark
def test_a_reading_stamped_after_its_message_is_malformed(spark: SparkSession) -> None:
    """A device clock far ahead (a reading of the year 9999 in a message written now) would
    make every later reading of its partition late, and Spark's watermark would drop every
    sensor's: a reading stamped later than its message by more than the lateness is refused,
    as the query service refuses it; up to the lateness it counts, and it moves the rest."""
    stamp = T0 + 60_000
    cases = [(stamp, True), (stamp + LATENESS_MS, True), (stamp + LATENESS_MS + 1, False),
             (wire.MAX_TS_MS, False), (T0, True), (stamp + 1, True)]
    rows = [(i, wire.encode(wire.Reading("d", SENSOR, i, ts, 1)), 0, stamp)
            for i, (ts, _) in enumerate(cases)]
    got = decode(_frame(spark, rows).coalesce(1), SENSOR, LATENESS_MS).select(
        "i", "r.valid", "r.late").orderBy("i").collect()
    assert [r["valid"] for r in got] == [ok for _, ok in cases]
    # T0 comes after a reading the lateness past it; stamp + 1 after nothing newer than
    # stamp + lateness (the refused ones move nothing)
    assert [r["late"] for r in got] == [False, False, None, None, True, False]
