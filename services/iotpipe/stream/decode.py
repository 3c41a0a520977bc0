"""Readings decoded by the wire module itself, a batch of messages at a time.

Every message goes to `wire.decode_many` (msgspec's compiled decoder) in an Arrow-batched UDF:
the stream and the query service run the same code, so they give the same verdict and values on
every message, and the stream needs no second copy of the wire format's rules. One call per
Arrow batch, not per row (tests/spark/test_stream_decode.py compares the verdicts).

The same pass judges rule 3 within the micro-batch: a task reads each of its Kafka partitions in
offset order, so the query service's `LateFilter` marks a reading written after one stamped the
lateness later in the same batch, as the query service does. Spark's watermark cannot: it only
moves between micro-batches, so a backlog's batch (or the first after a restart) would keep it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import groupby

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_type

from iotpipe.core import wire
from iotpipe.core.lateness import LateFilter

# exact: the value was a JSON integer (the rollups answer integer sums as integers, like the
# query service)
DECODED = T.StructType([T.StructField("device", T.StringType()),
                        T.StructField("seq", T.LongType()), T.StructField("ts", T.LongType()),
                        T.StructField("value", T.DoubleType()),
                        T.StructField("valid", T.BooleanType()),
                        T.StructField("exact", T.BooleanType()),
                        T.StructField("late", T.BooleanType())])
_ARROW = to_arrow_type(DECODED)


def decoded_batch(raws: pa.Array, partitions: pa.Array, stamps: pa.Array, sensor: str,
                  late_filters: dict[int, LateFilter], lateness_ms: int) -> pa.StructArray:
    """One Arrow batch of a topic's message values, partitions and timestamps (epoch ms), in
    the order the task read them -> one `DECODED` struct per message (a malformed one: valid
    false, the other fields null). `late_filters`: per partition, what the task's earlier
    batches left."""
    got, malformed = wire.decode_many(raws.to_pylist(), sensor, stamps.to_pylist(),
                                      lateness_ms)
    valid = [i not in malformed for i in range(len(raws))]

    def spread(field: Sequence[object]) -> Sequence[object]:
        """One entry per message: None for a malformed one."""
        found = iter(field)
        return [next(found) if ok else None for ok in valid] if malformed else field

    late: list[bool | None] = [False if ok else None for ok in valid]
    at = read = 0  # messages, and valid readings, judged so far
    for partition, run in groupby(partitions.to_pylist()):
        end = at + sum(1 for _ in run)
        judged = [i for i in range(at, end) if valid[i]]
        judge = late_filters.setdefault(partition, LateFilter(lateness_ms))
        on_time = judge.on_time(got.ts[read:read + len(judged)])
        if on_time is not None:
            for i, ok in zip(judged, on_time, strict=True):
                late[i] = not ok
        at, read = end, read + len(judged)
    # wire: an integer value is within a double's range
    columns = [spread(got.devices), spread(got.seqs), spread(got.ts),
               spread([float(v) for v in got.values]), valid,
               spread([type(v) is int for v in got.values]), late]
    return pa.StructArray.from_arrays([pa.array(c, f.type) for c, f in zip(columns, _ARROW,
                                                                           strict=True)],
                                      fields=list(_ARROW))


def _decoder(sensor: str, lateness_ms: int) -> Callable[[Column, Column, Column], Column]:
    def decode_values(batches: Iterator[tuple[pa.Array, pa.Array, pa.Array]]
                      ) -> Iterator[pa.Array]:  # the hints make it an iterator UDF: one task
        late_filters: dict[int, LateFilter] = {}
        for raws, partitions, stamps in batches:
            yield decoded_batch(raws, partitions, stamps, sensor, late_filters, lateness_ms)

    return F.arrow_udf(decode_values, DECODED)  # type: ignore[call-overload]  # hints lag


def decode(messages: DataFrame, sensor: str, lateness_ms: int) -> DataFrame:
    """Records of topic `sensor` (value, partition, timestamp, in the order each task reads
    them) -> their other columns and `r` (device, seq, ts, value, valid, exact, late)."""
    rest = [c for c in messages.columns if c != "value"]
    udf = _decoder(sensor, lateness_ms)
    return messages.select(*rest, udf(F.col("value"), F.col("partition"),
                                      F.unix_millis(F.col("timestamp"))).alias("r"))
