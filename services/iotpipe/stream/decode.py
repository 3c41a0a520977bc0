"""The wire format's rules in the JVM, so the stream decodes without a Python call per reading.

A message in the canonical form (what `wire.encode` writes and the sensors send: the five
fields in order, no whitespace, no escapes, at most 18 integer digits in the value) is parsed
with `from_json` and checked with SQL expressions (ranges, finite value, sensor of the topic,
valid UTF-8). Every other message (whitespace, escapes, extra or repeated fields,
odd numbers, anything malformed) is judged by `wire.decode` itself in an Arrow-batched UDF that
is handed only those messages. So the stream and the query service give the same verdict and
values on every message (tests/spark/test_stream_decode.py compares them).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from iotpipe.core import wire

FIELDS = [T.StructField("device", T.StringType()), T.StructField("seq", T.LongType()),
          T.StructField("ts", T.LongType()), T.StructField("value", T.DoubleType())]
# exact: the value was a JSON integer (the rollups answer integer sums as integers, like the
# query service)
DECODED = T.StructType([*FIELDS, T.StructField("valid", T.BooleanType()),
                        T.StructField("exact", T.BooleanType())])
_JSON = T.StructType([*FIELDS, T.StructField("sensor", T.StringType())])
_INT = r"(?:0|[1-9][0-9]{0,18})"
_CANONICAL = (r'\A\{"device":"[^"\\\x00-\x1f]+","sensor":"[^"\\\x00-\x1f]*","seq":' + _INT
              + ',"ts":' + _INT + r',"value":-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]+)?'
              + r'(?:[eE][-+]?[0-9]+)?\}\z')  # a Java regex
_ARROW = pa.struct([("device", pa.string()), ("seq", pa.int64()), ("ts", pa.int64()),
                    ("value", pa.float64()), ("valid", pa.bool_()), ("exact", pa.bool_())])


def jvm_decoded(text: Column, sensor: Column) -> Column:
    """The JVM's reading of a canonical message; `valid` is false when it cannot decide."""
    j = F.from_json(text, _JSON, {"allowNonNumericNumbers": "false"})
    ok = (text.rlike(_CANONICAL) & F.is_valid_utf8(text) & (j["sensor"] == sensor)
          & j["seq"].between(0, wire.MAX_SEQ) & j["ts"].between(0, wire.MAX_TS_MS)
          & (F.abs(j["value"]) < float("inf")))  # NaN is not below infinity in Spark SQL
    exact = ~F.substring_index(text, '"value":', -1).rlike("[.eE]")
    return F.struct(*(j[f.name].alias(f.name) for f in FIELDS),
                    F.coalesce(ok, F.lit(False)).alias("valid"), exact.alias("exact"))


def _judge(raws: pa.Array, sensors: pa.Array) -> pa.Array:
    """`wire.decode` on the rows whose sensor is set (the others get null)."""
    n = len(raws)
    cols: list[list] = [[None] * n for _ in range(len(_ARROW))]
    for i in pc.indices_nonzero(sensors.is_valid()).to_pylist():
        row: tuple[object, ...]
        try:
            r = wire.decode(raws[i].as_py(), sensors[i].as_py())
            # wire: within a double's range
            row = (r.device, r.seq, r.ts, float(r.value), True, type(r.value) is int)
        except wire.MalformedReading:
            row = (None, None, None, None, False, None)
        for col, v in zip(cols, row, strict=True):
            col[i] = v
    return pa.StructArray.from_arrays([pa.array(c, f.type) for c, f in zip(cols, _ARROW,
                                                                            strict=True)],
                                      fields=list(_ARROW))


_judge_udf = F.arrow_udf(_judge, DECODED)  # type: ignore[call-overload]  # hints lag the API


def decode(messages: DataFrame, sensor: str) -> DataFrame:
    """Records of topic `sensor` -> their other columns and `r` (device, seq, ts, value, valid).
    Two steps, so that `from_json` runs once per message and the UDF sees only the rest."""
    rest = [c for c in messages.columns if c != "value"]
    text = F.col("value").cast("string")
    fast = messages.select(*rest, "value", jvm_decoded(text, F.lit(sensor)).alias("f"))
    valid = F.col("f.valid")
    return fast.select(*rest, F.when(valid, F.col("f")).otherwise(
        _judge_udf(F.col("value"), F.when(~valid, F.lit(sensor)))).alias("r"))
