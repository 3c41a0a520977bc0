"""The streaming app's expected results, computed the plain way from what was produced."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from iotpipe.core.wire import Reading
from iotpipe.localstack.status import scrape


@dataclass
class Expected:
    """Replays produced batches (one micro-batch each) as the stream judges them: late against
    Spark's watermark, which moves between batches, or within the batch, against an earlier
    reading of its partition (see iotpipe.stream.decode)."""

    lateness_ms: int
    window_ms: int
    seen: dict[tuple[str, str, int], Reading] = field(default_factory=dict)
    late: Counter[str] = field(default_factory=Counter)  # per sensor
    duplicates: Counter[str] = field(default_factory=Counter)
    max_event: int = 0

    def batch(self, readings: list[Reading]) -> None:
        watermark = self.max_event - self.lateness_ms
        # a device's readings share a partition; the data must not depend on which devices
        # share one: the verdicts with every device alone and with all in one partition agree
        within = self._late_within(readings, lambda r: (r.sensor, r.device))
        assert within == self._late_within(readings, lambda r: r.sensor), \
            "the test data's verdicts depend on how devices share partitions"
        for r, late_within in zip(readings, within, strict=True):
            if r.ts <= watermark or late_within:  # Spark: late at or before it
                self.late[r.sensor] += 1
            elif (r.sensor, r.device, r.seq) in self.seen:
                self.duplicates[r.sensor] += 1
            else:
                self.seen[(r.sensor, r.device, r.seq)] = r
        self.max_event = max([self.max_event, *(r.ts for r in readings)])

    def _late_within(self, readings: list[Reading], partition: Callable[[Reading], object]
                     ) -> list[bool]:
        newest: dict[object, int] = {}
        late = []
        for r in readings:
            key = partition(r)
            late.append(r.ts <= newest.get(key, r.ts) - self.lateness_ms)
            newest[key] = max(newest.get(key, r.ts), r.ts)
        return late

    def values(self, sensor: str) -> list[float]:
        return [float(r.value) for r in self.seen.values() if r.sensor == sensor]

    def window(self, sensor: str, start: int) -> list[float]:
        return [float(r.value) for r in self.seen.values()
                if r.sensor == sensor and start <= r.ts < start + self.window_ms]


def wait_counts(url: str, want: dict[str, int], timeout_s: float, log: Path) -> dict:
    """Scrape the stream's gauges until every sensor's reading count is `want`."""
    deadline = time.monotonic() + timeout_s
    got: dict = {}
    while time.monotonic() < deadline:
        got = scrape(url)
        if all(got.get(("iotpipe_sensor_readings_total", s)) == n for s, n in want.items()):
            return got
        time.sleep(1)
    raise AssertionError(f"counts {got} never reached {want}:\n{log.read_text()[-3000:]}")
