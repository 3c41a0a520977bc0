"""`python -m iotpipe.bench [--sizes ...] [--out docs/benchmarks.md]`: prints tables, writes
them with the machine description. Starts its own broker in a temporary folder."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from iotpipe.bench import load_bench, query_bench
from iotpipe.bench.measure import machine
from iotpipe.core.settings import Settings
from iotpipe.localstack.kafka_broker import KafkaBroker, free_port
from iotpipe.localstack.maven import kafka_version
from iotpipe.localstack.topics import ensure_topics
from iotpipe.sensors.fleet import SensorFleet


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def simulator_rate(bootstrap: str, readings: int = 600_000) -> float:
    """Readings/s of one simulator process (1000 devices per sensor), acknowledged by Kafka."""
    settings = Settings.from_env({"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap,
                                  "IOTPIPE_TOPIC_PREFIX": "benchsim-",
                                  "IOTPIPE_DEVICES_PER_SENSOR": "1000"})
    ensure_topics(settings)
    fleet = SensorFleet(settings, seed=1)
    t = time.perf_counter()
    for _ in range(readings // 10_000):
        fleet.emit(10_000)
    left = fleet.close(120)
    rate = readings / (time.perf_counter() - t)
    assert left == 0 and sum(fleet.acknowledged().values()) == readings
    return rate


def query_table(results: list[query_bench.SizeResult]) -> str:
    rows = ["| readings/sensor | (a) service p50 / p99 ms | (a) peak RSS MiB | "
            "(b) prototype p50 / p99 ms | (b) peak RSS MiB | (c) raw consume msg/s p50 / best | "
            "(a) msg/s at p50 | a vs b (speed-up) | a / c (p50 / p50) | a / best c |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        rows.append(
            f"| {r.size:,} | {r.service_p50 * 1e3:.1f} / {r.service_p99 * 1e3:.1f} | "
            f"{r.service_rss:.0f} | {r.baseline_p50 * 1e3:.1f} / {r.baseline_p99 * 1e3:.1f} | "
            f"{r.baseline_rss:.0f} | {r.raw_rate:,.0f} / {max(r.raw_rates):,.0f} | "
            f"{r.messages / r.service_p50:,.0f} | {r.speedup:.1f}x | {r.of_raw:.0%} | "
            f"{r.of_best_raw:.0%} |")
    return "\n".join(rows)


def only_stream(out: Path | None) -> None:
    from iotpipe.bench import stream_bench

    with tempfile.TemporaryDirectory(prefix="iotpipe-bench-") as tmp:
        broker = KafkaBroker(Path(tmp) / "kafka", port=free_port(), heap="1g").start()
        try:
            section = stream_bench.run(broker.bootstrap, Path(tmp), log)
        finally:
            broker.stop()
    print(section)
    if out:
        write(out, None, [section])


def write(out: Path, header: str | None, sections: list[str]) -> None:
    """Replace the sections of `out` that have the same headings (and its header, if given);
    keep the others, e.g. one-off trials written by hand."""
    parts = out.read_text().rstrip("\n").split("\n\n## ") if out.exists() else [""]
    new = {s.split("\n", 1)[0]: s.rstrip("\n") for s in sections}
    kept = [new.pop("## " + p.split("\n", 1)[0], "## " + p) for p in parts[1:]]
    out.write_text("\n\n".join([(header or parts[0]).rstrip("\n"), *kept, *new.values()])
                   + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--only", choices=["stream"],
                        help="run one section; --out keeps the file's other sections")
    args = parser.parse_args()
    if args.only:
        return only_stream(args.out)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="iotpipe-bench-") as tmp:
        broker = KafkaBroker(Path(tmp) / "kafka", port=free_port(), heap="1g").start()
        try:
            sim = simulator_rate(broker.bootstrap)
            log(f"simulator: {sim:,.0f} readings/s")
            results = query_bench.run(broker.bootstrap, sizes, Path(tmp), log)
            sections = [
                "## Query service: 3 sensors x 4 metrics over the whole loaded window\n\n"
                "Data: readings 10 ms apart taking turns over 10 devices per sensor, as the "
                "simulator sends them (the de-duplication's bulk path; in a random device order "
                "it goes reading by reading). "
                "(a) this service over HTTP (gunicorn, 1 worker, 2 reader processes, window cache "
                "off: every request reads the topics); (b) the "
                "prototype's algorithm (sensors one after another, a new consumer each, one "
                "message per call, all values in a list); (c) one consumer reading the same "
                "messages without decoding them, tuned for throughput (large fetches, the "
                "readers' seldom cyclic GC), run 5 times between (a)'s requests: this "
                "machine's speed varies by tens of percent from minute to minute, so a / c "
                "compares medians, and the best raw run is shown too. RSS of (a) is the whole "
                "process tree (gunicorn master, worker, readers).\n\n" + query_table(results),
                f"## Sensor simulator\n\n| process | readings/s (acknowledged) |\n| --- | ---: |"
                f"\n| 1 (3000 devices) | {sim:,.0f} |"]
            if not args.skip_load:
                sections.append(load_bench.run(broker.bootstrap, Path(tmp), log))
            if not args.skip_stream:
                from iotpipe.bench import stream_bench

                sections.append(stream_bench.run(broker.bootstrap, Path(tmp), log))
        finally:
            broker.stop()
    header = (f"# Benchmarks\n\n`make bench`, {time.strftime('%Y-%m-%d', time.gmtime())}, "
              f"on {machine()}; Apache Kafka {kafka_version()} (one local broker, 3 "
              f"partitions per topic).\n")
    print(header + "\n" + "\n\n".join(sections))
    if args.out:
        write(args.out, header, sections)


if __name__ == "__main__":
    main()
