"""Readings decoded by the wire module itself, a batch of messages at a time.

Every message goes to `wire.decode_many` (msgspec's compiled decoder) in an Arrow-batched UDF:
the stream and the query service run the same code, so they give the same verdict and values on
every message, and the stream needs no second copy of the wire format's rules. One call per
Arrow batch, not per row (tests/spark/test_stream_decode.py compares the verdicts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_type

from iotpipe.core import wire

# exact: the value was a JSON integer (the rollups answer integer sums as integers, like the
# query service)
DECODED = T.StructType([T.StructField("device", T.StringType()),
                        T.StructField("seq", T.LongType()), T.StructField("ts", T.LongType()),
                        T.StructField("value", T.DoubleType()),
                        T.StructField("valid", T.BooleanType()),
                        T.StructField("exact", T.BooleanType())])
_ARROW = to_arrow_type(DECODED)


def decoded_batch(raws: pa.Array, sensor: str) -> pa.StructArray:
    """One Arrow batch of a topic's message values -> one `DECODED` struct per message (a
    malformed one: valid false, the other fields null)."""
    readings, malformed = wire.decode_many(raws.to_pylist(), sensor)
    rows: Sequence[wire.Reading | None] = readings
    if malformed:
        found = iter(readings)
        rows = [None if i in malformed else next(found) for i in range(len(raws))]
    columns = [[None if r is None else r.device for r in rows],
               [None if r is None else r.seq for r in rows],
               [None if r is None else r.ts for r in rows],
               # wire: an integer value is within a double's range
               [None if r is None else float(r.value) for r in rows],
               [r is not None for r in rows],
               [None if r is None else type(r.value) is int for r in rows]]
    return pa.StructArray.from_arrays([pa.array(c, f.type) for c, f in zip(columns, _ARROW,
                                                                           strict=True)],
                                      fields=list(_ARROW))


def _decoder(sensor: str) -> Callable[[Column], Column]:
    def decode_values(raws: pa.Array) -> pa.Array:  # the hints make it a scalar UDF
        return decoded_batch(raws, sensor)

    return F.arrow_udf(decode_values, DECODED)  # type: ignore[call-overload]  # hints lag


def decode(messages: DataFrame, sensor: str) -> DataFrame:
    """Records of topic `sensor` -> their other columns and `r` (device, seq, ts, value, valid,
    exact)."""
    rest = [c for c in messages.columns if c != "value"]
    return messages.select(*rest, _decoder(sensor)(F.col("value")).alias("r"))
