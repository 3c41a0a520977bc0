"""What `make status` and `make run` show: one line per supervised component, then the live
table (what each sensor sent, what the API and the stream say)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

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


# supervisord's process states in the words of `make status`
STATE_WORDS = {"RUNNING": "running", "STARTING": "starting", "BACKOFF": "restarting",
               "EXITED": "restarting", "STOPPING": "stopping", "STOPPED": "stopped",
               "FATAL": "stopped", "UNKNOWN": "stopped"}
TAIL_LINES = 5


def _since(epoch: int, now: float) -> str:
    if not epoch:
        return "never started"
    age = int(now - epoch)
    ago = f"{age // 3600}h{age // 60 % 60:02d}m" if age >= 3600 else f"{age // 60}m{age % 60:02d}s"
    return f"since {time.strftime('%H:%M:%S', time.localtime(epoch))} ({ago})"


def _tail(path: str, lines: int = TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, Path(path).stat().st_size - 64 * 1024))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def component_lines(infos: list[dict], history: dict[str, tuple[int, str]]) -> list[str]:
    """Per component (supervisord's process info): state, since when, restarts so far, how it
    last exited, and for one that is down its last log lines."""
    lines = []
    for i in infos:
        state = i["statename"]
        restarts, last_exit = history.get(i["name"], (0, ""))
        word = STATE_WORDS.get(state, state.lower())
        if word == "starting" and restarts:
            word = "restarting"
        epoch = i["start"] if state in ("RUNNING", "STARTING", "STOPPING") else i["stop"]
        note = f"  pid {i['pid']}" if state == "RUNNING" else ""
        if state == "FATAL":
            note = "  crash loop: given up (`make up` tries again)"
        if last_exit:
            note += f"  last exit: {last_exit}"
        lines.append(f"{i['name']:<9}{word:<12}{_since(epoch, i['now']):<30}"
                     f"restarts {restarts}{note}")
        if word in ("stopped", "restarting"):
            lines += [f"    | {line}" for line in _tail(i["stdout_logfile"])]
    return lines


class StatusBoard:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.tty = sys.stdout.isatty()

    def _api_last_minute(self) -> dict[str, dict]:
        now = int(time.time() * 1000)
        body: dict[str, object] = {sensor: ["count", "average"] for sensor in self.s.sensors}
        body |= {"from": format_ms(now - 60_000), "to": format_ms(now)}
        try:
            status, payload = http_post_json(
                f"http://{self.s.query_address}/compute/metrics", body, 5.0)
        except OSError:
            return {}
        return payload.get("result", {}) if status == 200 else {}

    def rows(self, header: str = "") -> list[str]:
        sent = scrape(f"http://{self.s.metrics_host}:{self.s.sensors_metrics_port}/metrics")
        stream = scrape(f"http://{self.s.metrics_host}:{self.s.stream_metrics_port}/metrics")
        api = self._api_last_minute()
        head = (f"{'sensor':<14}{'sent':>10}{'API 1m count':>14}{'API 1m avg':>12}"
                f"{'stream count':>14}{'stream mean':>13}")
        lines = [time.strftime("%H:%M:%S ") + header, head]
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

    def show(self, header: str) -> None:
        text = "\n".join(self.rows(header))
        if self.tty:
            sys.stdout.write("\x1b[H\x1b[J" + text + "\n")
        else:
            sys.stdout.write(text + "\n\n")
        sys.stdout.flush()
