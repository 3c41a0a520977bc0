"""The stream's decoding (wire.decode_many over Arrow batches, in Spark's Python workers) gives
wire.decode's verdict and values, message by message, on generated messages, valid and
malformed, in the real Spark session."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from iotpipe.core import wire
from iotpipe.stream.decode import decode
from wire_messages import SENSOR, messages


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
    df = spark.createDataFrame([(i, raw) for i, raw in enumerate(raws)], "i long, value binary")
    rows = decode(df, SENSOR).select("i", "r.*").orderBy("i").collect()
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
    df = spark.createDataFrame([(i, wire.encode(r)) for i, r in enumerate(readings)],
                               "i long, value binary")
    rows = decode(df.coalesce(1), SENSOR).select("i", "r.*").orderBy("i").collect()
    got = [(r["device"], r["seq"], r["ts"], r["value"], r["exact"], r["valid"]) for r in rows]
    assert got == [(r.device, r.seq, r.ts, float(r.value), type(r.value) is int, True)
                   for r in readings]
