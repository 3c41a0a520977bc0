"""The prototype's algorithm, as the baseline of `make bench`.

One sensor after another, a new consumer for each, every value of the window loaded into a
list, one message per call (the prototype iterated kafka-python's consumer), then
`statistics.mean`, `min`, `max`, `len`. Same client library as the service (confluent-kafka).
Run as its own process (`python -m iotpipe.bench.baseline ...`) so its peak RSS is its own.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from iotpipe.core import wire

FUNCTIONS = {"average": statistics.mean, "min": min, "max": max, "count": len}


def _window_values(bootstrap: str, topic: str, from_ms: int, to_ms: int) -> list[int | float]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "iotpipe-baseline",
                  "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        starts = c.offsets_for_times([TopicPartition(topic, p, from_ms) for p in parts], 10)
        ends = c.offsets_for_times([TopicPartition(topic, p, to_ms + 1) for p in parts], 10)
        latest = c.offsets_for_times([TopicPartition(topic, p, OFFSET_END) for p in parts], 10)
        values: list[int | float] = []
        for start, end, last in zip(starts, ends, latest, strict=True):
            stop = end.offset if end.offset >= 0 else last.offset
            if start.offset < 0 or start.offset >= stop:
                continue
            c.assign([start])
            while True:
                msg = c.poll(10)
                if msg is None:
                    raise TimeoutError(f"{topic}: no message within 10 s")
                if msg.offset() >= stop:
                    break
                values.append(wire.decode(msg.value()).value)
                if msg.offset() == stop - 1:
                    break
        return values
    finally:
        c.close()


def compute(bootstrap: str, operations: dict[str, list[str]], topics: dict[str, str],
            from_ms: int, to_ms: int) -> dict[str, dict[str, object]]:
    result = {}
    for sensor, metrics in operations.items():
        values = _window_values(bootstrap, topics[sensor], from_ms, to_ms)
        result[sensor] = {m: FUNCTIONS[m](values) for m in metrics}
    return result


def main() -> None:
    """argv: bootstrap, JSON {sensor: topic}, from_ms, to_ms, repeats -> JSON on stdout."""
    bootstrap, topics_json, from_ms, to_ms, repeats = sys.argv[1:6]
    topics = json.loads(topics_json)
    ops = {s: ["count", "min", "max", "average"] for s in topics}
    latencies, result = [], {}
    for _ in range(int(repeats)):
        t = time.perf_counter()
        result = compute(bootstrap, ops, topics, int(from_ms), int(to_ms))
        latencies.append(time.perf_counter() - t)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"latencies": latencies, "peak_rss_mib": peak_kib / 1024,
                      "result": result}))


if __name__ == "__main__":
    main()
