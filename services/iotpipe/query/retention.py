"""How far back the sensor topics still hold readings: their `retention.ms`, looked up now and
then, so that a window reaching further back is answered from the rollups at bucket precision
and says so, never as a silent 0."""

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


def retention_note(expired_ms: int, how: str) -> str:
    """The answer's note for a part of a window older than the horizon, saying `how` it was
    answered."""
    return f"Readings before {format_ms(expired_ms)} may have passed the topics' retention: {how}"


class Retention:
    def __init__(self, settings: Settings) -> None:
        self._admin = AdminClient(settings.kafka.client_config() | {"log_level": 0})
        self._timeout = settings.kafka.timeout_s
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, int]] = {}  # topic -> (looked up at, ms; -1: all)

    def horizon_ms(self, topics: list[str]) -> int | None:
        """Readings stamped before this may have been deleted (the shortest retention of the
        topics, counted back from now); None if they keep everything or nobody knows."""
        now = time.monotonic()
        with self._lock:
            stale = [t for t in topics if now - self._known.get(t, (-REFRESH_S, 0))[0]
                     >= REFRESH_S]
        if stale:
            self._look_up(stale, now)
        with self._lock:
            kept = [self._known[t][1] for t in topics if t in self._known]
        kept = [ms for ms in kept if ms >= 0]
        return int(time.time() * 1000) - min(kept) if kept else None

    def _look_up(self, topics: list[str], now: float) -> None:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
        try:
            futures = self._admin.describe_configs(resources, request_timeout=self._timeout)
            found = {r.name: int(f.result(self._timeout)["retention.ms"].value)
                     for r, f in futures.items()}
        except (KafkaException, KeyError, ValueError, cf.TimeoutError) as e:
            log.warning("topic retention not known (%s): windows are not checked against it "
                        "for %.0f s", e, REFRESH_S)
            found = {t: self._known.get(t, (0.0, -1))[1] for t in topics}  # ask again later
        with self._lock:
            self._known |= {t: (now, ms) for t, ms in found.items()}
