"""The live table of `make run`: what each sensor sent, what the API and the stream say."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from iotpipe.core.settings import Settings
from iotpipe.localstack.processes import http_get, http_post_json
from iotpipe.query.timestamps import format_ms

_SAMPLE = re.compile(r'^(\w+)\{[^}]*sensor="([^"]+)"[^}]*\} (\S+)$', re.M)


def scrape(url: str) -> dict[tuple[str, str], float]:
    """{(metric, sensor): value} of a Prometheus endpoint; {} when it does not answer."""
    try:
        status, body = http_get(url, 1.0)
    except OSError:
        return {}
    if status != 200:
        return {}
    out: dict[tuple[str, str], float] = {}
    for name, sensor, value in _SAMPLE.findall(body.decode()):
        out.setdefault((name, sensor), float(value))
    return out


class StatusBoard:
    def __init__(self, settings: Settings, procs: dict[str, subprocess.Popen[bytes]]) -> None:
        self.s = settings
        self.procs = procs
        self.tty = sys.stdout.isatty()

    def _api_last_minute(self) -> dict[str, dict]:
        now = int(time.time() * 1000)
        body: dict[str, object] = {sensor: ["count", "average"] for sensor in self.s.sensors}
        body |= {"from": format_ms(now - 60_000), "to": format_ms(now)}
        try:
            status, payload = http_post_json(
                f"http://{self.s.query_host}:{self.s.query_port}/compute/metrics", body, 5.0)
        except OSError:
            return {}
        return payload.get("result", {}) if status == 200 else {}

    def rows(self) -> list[str]:
        sent = scrape(f"http://{self.s.metrics_host}:{self.s.sensors_metrics_port}/metrics")
        stream = scrape(f"http://{self.s.metrics_host}:{self.s.stream_metrics_port}/metrics")
        api = self._api_last_minute()
        head = (f"{'sensor':<14}{'sent':>10}{'API 1m count':>14}{'API 1m avg':>12}"
                f"{'stream count':>14}{'stream mean':>13}")
        lines = [time.strftime("%H:%M:%S ") + "  ".join(
            f"{n}:{'up' if p.poll() is None else 'DOWN'}" for n, p in self.procs.items()), head]
        for sensor in self.s.sensors:
            a = api.get(sensor, {})
            avg = a.get("average")
            mean = stream.get(("iotpipe_sensor_value_mean", sensor))
            lines.append(
                f"{sensor:<14}{sent.get(('iotpipe_sensor_readings_sent_total', sensor), 0):>10.0f}"
                f"{a.get('count', '-'):>14}{f'{avg:.2f}' if avg is not None else '-':>12}"
                f"{stream.get(('iotpipe_sensor_readings_total', sensor), float('nan')):>14.0f}"
                f"{mean if mean is not None else float('nan'):>13.2f}")
        return lines

    def show(self) -> None:
        text = "\n".join(self.rows())
        if self.tty:
            sys.stdout.write("\x1b[H\x1b[J" + text + "\n")
        else:
            sys.stdout.write(text + "\n\n")
        sys.stdout.flush()
