"""Measuring helpers of the benchmark: process-tree RSS sampling, percentiles, machine facts."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition

from iotpipe.localstack.processes import tree_pids


def topic_partitions(consumer: Consumer, topics: Iterable[str],
                     offset: int = OFFSET_INVALID) -> list[TopicPartition]:
    """Every partition of these topics, at `offset` (for `assign`)."""
    return [TopicPartition(topic, p, offset) for topic in topics
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]


def messages_in(consumer: Consumer, partitions: Iterable[TopicPartition]) -> int:
    """Messages in these partitions now: the sum of their end offsets, exact at any moment."""
    return sum(consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
               for tp in partitions)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def tree_cpu_s(pid: int) -> float:
    """CPU time (user + system) a process and its live descendants have used, with their
    children that have exited and been reaped, seconds."""
    total = 0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(map(int, fields[11:15]))  # its own and its reaped children's
    return total / os.sysconf("SC_CLK_TCK")


def _cpu_ticks_since_boot() -> list[int]:
    """All cores' CPU time by kind, in clock ticks (the first line of /proc/stat): user, nice,
    system, idle, iowait, irq, softirq, steal."""
    return list(map(int, Path("/proc/stat").read_text().split()[1:9]))


def machine_busy_s() -> float:
    """CPU time all cores together have spent busy (not idle, not waiting on I/O), seconds."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = _cpu_ticks_since_boot()
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int]:
    """CPU time of all cores since boot, in clock ticks: (stolen, all). Stolen (`steal`) is
    time the hypervisor gave to other machines while this one had work to run."""
    ticks = _cpu_ticks_since_boot()
    return ticks[7], sum(ticks)


def stolen_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the CPU time between two `cpu_ticks()` that was stolen: how much of its
    own speed this machine lacked meanwhile."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


class PeakRss:
    """Samples a process tree's RSS every 20 ms while active; `.peak` is the maximum seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mib(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self.peak = tree_rss_mib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    java = subprocess.run(["java", "-version"], capture_output=True, text=True,
                          check=False).stderr.splitlines()[:1]
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, "
            f"{java[0] if java else 'no java'}")
