"""Prometheus metrics of the sensor simulator (served on IOTPIPE_SENSORS_METRICS_PORT)."""

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry(auto_describe=True)

READINGS_SENT = Counter(
    "iotpipe_sensor_readings_sent", "Readings the broker acknowledged", ["sensor"],
    registry=REGISTRY)
READINGS_FAILED = Counter(
    "iotpipe_sensor_readings_failed",
    "Readings given up on (no acknowledgement after retries, or no room at a stop)", ["sensor"],
    registry=REGISTRY)
DUPLICATES_INJECTED = Counter(
    "iotpipe_sensor_duplicates_injected", "Readings deliberately sent twice (test injection)",
    ["sensor"], registry=REGISTRY)
LATE_INJECTED = Counter(
    "iotpipe_sensor_late_injected", "Readings deliberately held back (test injection)",
    ["sensor"], registry=REGISTRY)
QUEUED = Gauge(
    "iotpipe_sensor_producer_queue_messages", "Readings buffered in the producer, not yet acked",
    registry=REGISTRY)
BROKER_UP = Gauge(
    "iotpipe_sensor_broker_up", "1 while the producer reaches the broker, 0 during an outage",
    registry=REGISTRY)
