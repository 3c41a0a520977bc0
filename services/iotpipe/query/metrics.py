"""Prometheus metrics of the query service.

gunicorn runs several worker processes, so these use prometheus-client's multiprocess mode when
PROMETHEUS_MULTIPROC_DIR is set (`python -m iotpipe.query` sets it); the gunicorn master serves
them, all workers merged, on their own port (gunicorn_conf.when_ready).
"""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "iotpipe_http_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "iotpipe_http_request_duration_seconds", "Time to answer an HTTP request", ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
MESSAGES_SCANNED = Counter(
    "iotpipe_query_messages_scanned", "Topic messages read to answer queries", ["sensor"])
MALFORMED = Counter(
    "iotpipe_query_malformed_messages", "Topic messages skipped as not a valid reading",
    ["sensor"])
DUPLICATES = Counter(
    "iotpipe_query_duplicate_readings", "Repeated readings (same device and seq) counted once",
    ["sensor"])
LATE = Counter(
    "iotpipe_query_late_readings", "Readings inside a window asked that reached their partition "
    "later than the allowed lateness (counted in no window)", ["sensor"])
BROKER_ERRORS = Counter(
    "iotpipe_query_broker_errors", "Queries that failed because the broker did not answer")
WINDOWS = Counter(
    "iotpipe_query_windows", "Windows answered, by path: rollups (whole buckets from the "
    "rollup topic, plus raw edges) or raw (readings only)", ["path"])
ROLLUP_LAG = Gauge(
    "iotpipe_query_rollup_lag_seconds", "Now minus the end of the newest final rollup bucket "
    "(+Inf while none is held: windows are read from the readings)",
    multiprocess_mode="livemax")
ROLLUP_MALFORMED = Counter(
    "iotpipe_query_rollup_records_malformed", "Rollup records that could not be read (their "
    "buckets are answered from the readings)")
