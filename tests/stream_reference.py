"""The streaming app's expected results, computed the plain way from what was produced."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from iotpipe.core.wire import Reading
from iotpipe.localstack.status import scrape


@dataclass
class Expected:
    """Replays produced batches as Spark sees them: the watermark moves between batches."""

    lateness_ms: int
    window_ms: int
    seen: dict[tuple[str, str, int], Reading] = field(default_factory=dict)
    late: Counter[str] = field(default_factory=Counter)  # per sensor
    duplicates: Counter[str] = field(default_factory=Counter)
    max_event: int = 0

    def batch(self, readings: list[Reading]) -> None:
        watermark = self.max_event - self.lateness_ms
        for r in readings:
            if r.ts < watermark:
                self.late[r.sensor] += 1
            elif (r.sensor, r.device, r.seq) in self.seen:
                self.duplicates[r.sensor] += 1
            else:
                self.seen[(r.sensor, r.device, r.seq)] = r
        self.max_event = max([self.max_event, *(r.ts for r in readings)])

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
