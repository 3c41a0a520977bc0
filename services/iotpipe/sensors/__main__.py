"""`python -m iotpipe.sensors`: simulate the configured fleet until SIGTERM or Ctrl-C."""

from __future__ import annotations

import faulthandler
import logging
import sys
import time

from iotpipe.core.exporter import serve_metrics
from iotpipe.core.logs import configure_logging
from iotpipe.core.settings import Settings, SettingsError
from iotpipe.core.stopping import StopFlag
from iotpipe.sensors import metrics as prom
from iotpipe.sensors.fleet import SensorFleet

log = logging.getLogger("iotpipe.sensors")
TICK_S = 0.01
# readings made at most between two looks at the stop flag (more are due after a stall)
EMIT_MAX = 1000


def run(settings: Settings, stop: StopFlag) -> int:
    """Emit readings at the configured rate until `stop`; return readings left unsent."""
    fleet = SensorFleet(settings, stopping=stop.is_set)
    total_rate = settings.sensor_rate_hz * len(fleet.devices)
    log.info("simulating %d devices (%s), %g readings/s in all, seqs from %d, to %s",
             len(fleet.devices), ", ".join(settings.sensors), total_rate,
             fleet.devices[0].seq, settings.kafka.bootstrap)
    # no seq is sent before its time (seq / rate): a fleet restarted at once starts above
    # every seq the last one sent (see SensorFleet)
    stop.wait(max(0.0, fleet.devices[0].seq / settings.sensor_rate_hz - time.time()))
    start, emitted, last_publish = time.monotonic(), 0, 0.0
    while not stop.is_set():
        now = time.monotonic()
        due = int((now - start) * total_rate) + 1 - emitted
        if due > 0:
            due = min(due, EMIT_MAX)
            fleet.emit(due)
            emitted += due
        else:
            fleet.producer.poll(0)
            fleet.release_late(force=False)
        if now - last_publish >= 1.0:
            fleet.publish_metrics()
            last_publish = now
        stop.wait(min(TICK_S, max(0.0, start + (emitted / total_rate) - time.monotonic())))
    log.info("stopping: flushing buffered readings")
    return fleet.close()


def main() -> None:
    faulthandler.enable()  # SIGABRT (or a crash) prints every thread's stack: a hang shows where
    try:
        settings = Settings.from_env()
        settings.kafka.check_files()
    except SettingsError as e:
        sys.exit(f"iotpipe sensors: {e}")
    configure_logging(settings)
    serve_metrics("sensors", settings.metrics_host, settings.sensors_metrics_port, prom.REGISTRY)
    stop = StopFlag()
    stop.set_on_signals()
    left = run(settings, stop)
    sys.exit(1 if left else 0)


if __name__ == "__main__":
    main()
