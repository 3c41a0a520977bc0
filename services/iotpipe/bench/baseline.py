"""The prototype as it ran, the baseline of `make bench`: kafka-python (a bench-only
dependency), one consumer per sensor, its message iterator, `json.loads` per message, every
value of the window in a list, then `statistics.mean`, `min`, `max`, `len`.

The partitions of a topic are read from the first offset stamped at or after `from` to the
first stamped after `to` (the window's values only; the prototype's off-by-one is not copied).
Run as its own process (`python -m iotpipe.bench.baseline ...`) so its peak RSS is its own.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

FUNCTIONS: dict[str, Callable[[list[int | float]], object]] = {
    "average": statistics.mean, "min": min, "max": max, "count": len}


def _window_values(bootstrap: str, topic: str, from_ms: int, to_ms: int) -> list[int | float]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=10_000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        starts = consumer.offsets_for_times({tp: from_ms for tp in parts})
        stops = consumer.offsets_for_times({tp: to_ms + 1 for tp in parts})
        ends = consumer.end_offsets(parts)
        todo = {}
        for tp in parts:
            start = starts[tp].offset if starts[tp] is not None else ends[tp]
            stop = stops[tp].offset if stops[tp] is not None else ends[tp]
            if start < stop:
                todo[tp] = (start, stop)
        values: list[int | float] = []
        if not todo:
            return values
        consumer.assign(list(todo))
        for tp, (start, _) in todo.items():
            consumer.seek(tp, start)
        left = set(todo)
        for msg in consumer:
            tp = TopicPartition(msg.topic, msg.partition)
            if tp not in left or msg.offset >= todo[tp][1]:
                continue
            values.append(json.loads(msg.value)["value"])
            if msg.offset == todo[tp][1] - 1:
                left.discard(tp)
                if not left:
                    break
        if left:
            raise TimeoutError(f"{topic}: no message for 10 s")
        return values
    finally:
        consumer.close()


def compute(bootstrap: str, operations: dict[str, list[str]], topics: dict[str, str],
            from_ms: int, to_ms: int) -> dict[str, dict[str, object]]:
    result = {}
    for sensor, metrics in operations.items():
        values = _window_values(bootstrap, topics[sensor], from_ms, to_ms)
        result[sensor] = {m: FUNCTIONS[m](values) if values or m == "count" else None
                          for m in metrics}
    return result


def main() -> None:
    """argv: bootstrap, JSON {sensor: topic}, JSON [[from_ms, to_ms], ...] -> JSON on stdout:
    one latency and one result per window."""
    bootstrap, topics_json, windows_json = sys.argv[1:4]
    topics = json.loads(topics_json)
    ops = {s: ["count", "min", "max", "average"] for s in topics}
    latencies, results = [], []
    for from_ms, to_ms in json.loads(windows_json):
        t = time.perf_counter()
        results.append(compute(bootstrap, ops, topics, from_ms, to_ms))
        latencies.append(time.perf_counter() - t)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"latencies": latencies, "peak_rss_mib": peak_kib / 1024,
                      "results": results}))


if __name__ == "__main__":
    main()
