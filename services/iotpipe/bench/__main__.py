"""`python -m iotpipe.bench [--only query,load,...] [--out docs/benchmarks.md]`: prints tables,
writes them with the machine description (the other sections of --out stay).
Starts its own broker in a temporary folder."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from iotpipe.bench import load_bench, query_bench, slow_clients_bench
from iotpipe.bench.measure import cpu_ticks, machine, stolen_share
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


def merge_sections(old: str, new: list[str]) -> list[str]:
    """The sections of an earlier run (split at "## " headings), each replaced by the new
    section with the same heading; sections new to the file are added at the end."""
    sections = ["## " + part.strip() for part in old.split("\n## ")[1:]]
    for section in new:
        heading = section.split("\n", 1)[0]
        same = [i for i, s in enumerate(sections) if s.split("\n", 1)[0] == heading]
        if same:
            sections[same[0]] = section
        else:
            sections.append(section)
    return sections


SECTIONS = ("query", "simulator", "load", "slow-clients", "stream", "rollups")


def _simulator_section(bootstrap: str) -> str:
    sim = simulator_rate(bootstrap)
    log(f"simulator: {sim:,.0f} readings/s")
    return ("## Sensor simulator\n\n| process | readings/s (acknowledged) |"
            f"\n| --- | ---: |\n| 1 (3000 devices) | {sim:,.0f} |")


def _runs(bootstrap: str, workdir: Path) -> dict[str, Callable[[], str]]:
    """Each section's run (Spark's imported only for the sections that need it)."""

    def stream() -> str:
        from iotpipe.bench import stream_bench
        return stream_bench.run(bootstrap, workdir, log)

    def rollups() -> str:
        from iotpipe.bench import rollup_bench
        return rollup_bench.run(bootstrap, workdir, log)

    return {"query": lambda: query_bench.run(bootstrap, workdir, log),
            "simulator": lambda: _simulator_section(bootstrap),
            "load": lambda: load_bench.run(bootstrap, workdir, log),
            "slow-clients": lambda: slow_clients_bench.run(bootstrap, workdir, log),
            "stream": stream, "rollups": rollups}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections among {', '.join(SECTIONS)}; the "
                             "others keep what --out holds")
    args = parser.parse_args()
    only = args.only.split(",")
    if unknown := set(only) - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    written: list[tuple[str, float]] = []  # each section, and the share stolen while it ran
    with tempfile.TemporaryDirectory(prefix="iotpipe-bench-") as tmp:
        broker = KafkaBroker(Path(tmp) / "kafka", port=free_port(), heap="1g").start()
        runs = _runs(broker.bootstrap, Path(tmp))
        try:
            for name in [s for s in SECTIONS if s in only]:
                before = cpu_ticks()
                section = runs[name]()
                written.append((section, stolen_share(before, cpu_ticks())))
        finally:
            broker.stop()
    ran = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    sections = [s.replace("\n\n", (
        f"\n\nRun: {ran}. The hypervisor took {stolen:.0%} of the CPU time during this "
        "section (steal: the cores ran other machines while this one had work).\n\n"), 1)
        for s, stolen in written]
    if args.out and args.out.exists():  # sections not run now, or written by hand, stay
        sections = merge_sections(args.out.read_text(), sections)
    header = (f"# Benchmarks\n\n`make bench` on {machine()}; Apache Kafka {kafka_version()} "
              "(one local broker, 3 partitions per topic). Each section says when it ran "
              "(`make bench BENCH_ARGS=\"--only query\"` re-runs one).\n")
    text = header + "\n" + "\n\n".join(sections) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
