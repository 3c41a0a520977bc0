"""The stream's decoding (JVM + wire.decode for what the JVM leaves) gives wire.decode's verdict
and values on generated messages, valid and malformed, in the real Spark session."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from iotpipe.core import wire
from iotpipe.stream.decode import decode, jvm_decoded
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
def test_canonical_messages_are_decoded_in_the_jvm(spark: SparkSession) -> None:
    """What the sensors send never reaches the Python fallback: the JVM alone decides."""
    raws = [wire.encode(wire.Reading(f"d{i}", SENSOR, i, 1_700_000_000_000 + i, i / 4))
            for i in range(200)] + [b'{"device":"d","sensor":"x","seq":1,"ts":1,"value":1}']
    df = spark.createDataFrame([(raw,) for raw in raws], "value binary")
    out = df.select(jvm_decoded(F.col("value").cast("string"), F.lit(SENSOR)).alias("f"))
    got = [(r["device"], r["seq"], r["value"], r["valid"]) for r in out.select("f.*").collect()]
    assert got[:-1] == [(f"d{i}", i, i / 4, True) for i in range(200)]
    assert got[-1][-1] is False  # another sensor's reading: left to the fallback
