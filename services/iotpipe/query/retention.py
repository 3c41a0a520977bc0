"""How far back the sensor topics still hold readings: their `retention.ms`, looked up in the
background now and then, so that a window reaching further back is answered from the rollups
at bucket precision and says so, never as a silent 0."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource

from iotpipe.core.settings import Settings
from iotpipe.query.timestamps import format_ms

log = logging.getLogger(__name__)
REFRESH_S = 300.0
RETRY_S = 15.0  # after a failed lookup (the broker away): the known values stay meanwhile


def retention_note(sensors: list[str], expired_ms: int, how: str) -> str:
    """The answer's note on a part of the sensors' window older than their horizon: `how` it
    was answered."""
    whose = "its topic's" if len(sensors) == 1 else "their topics'"
    return (f"Readings of {', '.join(sensors)} before {format_ms(expired_ms)} may have passed "
            f"{whose} retention: {how}")


class Retention:
    """Requests never wait for a lookup but the first: a request finding the values old starts
    a lookup in a thread and answers with what is known."""

    def __init__(self, settings: Settings) -> None:
        self._admin = AdminClient(settings.kafka.client_config() | {"log_level": 0})
        self._timeout = settings.kafka.timeout_s
        self._topics = [settings.topic(sensor) for sensor in settings.sensors]
        self._lock = threading.Lock()
        self._known: dict[str, int] = {}  # topic -> retention ms (-1: keeps everything)
        self._next = 0.0  # time.monotonic() of the next lookup
        self._running = False
        self._first = threading.Event()  # the first lookup has finished (or failed)
        self._refresh()

    def horizons_ms(self, topics: list[str]) -> dict[str, int | None]:
        """Per topic, the time before which its readings may have been deleted (its retention
        counted back from one `now`, so that topics of one retention share a horizon); None if
        it keeps everything or nobody knows."""
        self._first.wait(2 * self._timeout + 1)
        if time.monotonic() >= self._next:
            self._refresh()
        now = int(time.time() * 1000)
        with self._lock:
            kept = {t: self._known.get(t, -1) for t in topics}
        return {t: now - ms if ms >= 0 else None for t, ms in kept.items()}

    def _refresh(self) -> None:
        with self._lock:
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._look_up, name="retention", daemon=True).start()

    def _look_up(self) -> None:
        """Each topic's retention; a topic not answered (not created yet, the broker away)
        keeps its last known value and all are asked again sooner."""
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in self._topics]
        deadline = time.monotonic() + self._timeout
        found: dict[str, int] = {}
        missed: list[str] = []
        try:
            futures = self._admin.describe_configs(resources, request_timeout=self._timeout)
            for r, f in futures.items():
                try:
                    left = max(0.0, deadline - time.monotonic())
                    found[r.name] = int(f.result(left)["retention.ms"].value)
                except (KafkaException, KeyError, ValueError, cf.TimeoutError) as e:
                    missed.append(f"{r.name}: {str(e) or 'timed out'}")
        finally:  # even if librdkafka raised otherwise: the next request asks again
            with self._lock:
                self._known |= found
                self._next = time.monotonic() + (RETRY_S if missed else REFRESH_S)
                self._running = False
            self._first.set()
        if missed:
            log.warning("topic retention not known (%s): windows are checked against the last "
                        "values known; asked again in %.0f s", "; ".join(missed), RETRY_S)
