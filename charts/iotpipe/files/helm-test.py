"""`helm test`: the API answers /health and a compute/metrics request through its Service, and
the stream exporter answers. Standard library only (runs in the query image); exits non-zero
with one line per failed check.

Env: IOTPIPE_TEST_API (the Service's base URL), IOTPIPE_TEST_SENSOR (a sensor type),
IOTPIPE_TEST_STREAM_METRICS (the exporter's URL; empty: no stream), IOTPIPE_API_TOKEN_FILE.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

TIMEOUT_S = 10.0
PATIENCE_S = float(os.environ.get("IOTPIPE_TEST_PATIENCE_SECONDS", "120"))


def call(url: str, body: dict | None = None, token: str = "") -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def eventually(name: str, check: object) -> str | None:
    """Run `check` (returns an error text or None) until it passes or the patience runs out."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            error = check()
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
        if error is None:
            print(f"ok   {name}")
            return None
        if time.monotonic() >= deadline:
            return f"FAIL {name}: {error}"
        time.sleep(2)


def main() -> int:
    api = os.environ["IOTPIPE_TEST_API"].rstrip("/")
    sensor = os.environ["IOTPIPE_TEST_SENSOR"]
    stream = os.environ.get("IOTPIPE_TEST_STREAM_METRICS", "")
    token_file = os.environ.get("IOTPIPE_API_TOKEN_FILE", "")
    token = Path(token_file).read_text().strip() if token_file else ""
    now = datetime.now(UTC)
    window = {"from": f"{now - timedelta(hours=1):%Y-%m-%d %H:%M:%S}",
              "to": f"{now:%Y-%m-%d %H:%M:%S}"}

    def health() -> str | None:
        status, body = call(f"{api}/health")
        ok = status == 200 and json.loads(body) == {"status": "Healthy!"}
        return None if ok else f"{status} {body[:200]!r}"

    def compute() -> str | None:
        status, body = call(f"{api}/compute/metrics", {sensor: ["count"], **window}, token)
        answer = json.loads(body) if status == 200 else {}
        count = answer.get("result", {}).get(sensor, {}).get("count")
        ok = answer.get("errors") == [] and isinstance(count, int) and count >= 0
        return None if ok else f"{status} {body[:300]!r}"

    def exporter() -> str | None:
        status, body = call(stream)
        ok = status == 200 and b"# TYPE iotpipe_stream_last_batch_id gauge" in body
        return None if ok else f"{status} {body[:200]!r}"

    checks = [("GET /health", health), (f"POST /compute/metrics ({sensor})", compute)]
    if stream:
        checks.append(("stream exporter /metrics", exporter))
    failures = [f for name, check in checks if (f := eventually(name, check))]
    for failure in failures:
        print(failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
