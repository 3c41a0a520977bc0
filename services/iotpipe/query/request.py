"""Validation of a `POST /compute/metrics` body into a `MetricsRequest`.

The prototype's contract: bad parts of a request (unknown keys or metrics) are reported in
`errors` beside the computed rest; a request that is bad as a whole raises `RequestError`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from iotpipe.query.aggregate import METRICS
from iotpipe.query.timestamps import FORMAT_HELP, BadTimestamp, parse_ms

MAX_DEPTH = 32
# errors about a body's keys and metrics listed, the last saying how many more there were: a
# body of many unknown metrics would otherwise get an answer many times its size
MAX_ERRORS = 100


class RequestError(ValueError):
    """The request as a whole cannot be answered; `status` is the HTTP status to send."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status


@dataclass
class MetricsRequest:
    from_ms: int
    to_ms: int
    operations: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes) -> object:
    """JSON of the body; RequestError(400) with the parser's own words when it is not JSON.
    UTF-8, or UTF-16 or -32, a byte order mark allowed: what the prototype's Flask took."""
    too_deep = RequestError(400, f"Request body is nested deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise RequestError(400, "Request body is not valid JSON: not UTF-8, UTF-16 or UTF-32 "
                                "text") from None
    except RecursionError:
        raise too_deep from None
    except ValueError as e:
        if "integer string conversion" in str(e):  # (Python's advice would mislead a client)
            raise RequestError(400, "Request body has an integer of more than "
                                    f"{sys.get_int_max_str_digits()} digits") from None
        raise RequestError(400, f"Request body is not valid JSON: {e}") from None
    if _nesting(body) > MAX_DEPTH:
        raise too_deep
    return body


def _nesting(value: object) -> int:
    """How deep the parsed JSON nests objects and arrays (level by level: no recursion)."""
    depth, level = 0, [value]
    while containers := [v for v in level if isinstance(v, dict | list)]:
        depth += 1
        level = [x for v in containers for x in (v.values() if isinstance(v, dict) else v)]
    return depth


def _bound(body: dict[str, object], name: str) -> int:
    try:
        return parse_ms(body[name])
    except BadTimestamp as e:
        raise RequestError(400, f'Incorrect input timestamp format for "{name}", '
                                f"should be {FORMAT_HELP}" if str(e) == FORMAT_HELP
                           else f'Incorrect "{name}": {e}') from None


def validate(body: object, sensors: tuple[str, ...], max_window_s: float) -> MetricsRequest:
    """Split a parsed body into the operations to compute and the errors to report."""
    if not isinstance(body, dict):
        raise RequestError(400, "Request body must be a JSON object")
    if "from" not in body or "to" not in body:
        raise RequestError(400, 'Keys "from" and "to" are required')
    from_ms, to_ms = _bound(body, "from"), _bound(body, "to")
    if from_ms > to_ms:
        raise RequestError(400, '"from" has to be earlier than "to"')
    if to_ms - from_ms > max_window_s * 1000:
        raise RequestError(400, f"The window is longer than the maximum of "
                                f"{max_window_s:.0f} seconds")
    req = MetricsRequest(from_ms, to_ms)
    for key, value in body.items():
        if key in ("from", "to"):
            continue
        if key not in sensors:
            req.errors.append(f"Unexpected key {key} in the request body")
            continue
        if metrics := _metrics(key, value, req.errors):
            req.operations[key] = metrics
    if not req.operations and not req.errors:
        req.errors.append(f"No sensor requested; valid sensors: {', '.join(sensors)}")
    if len(req.errors) > MAX_ERRORS:
        more = len(req.errors) - MAX_ERRORS + 1
        req.errors[MAX_ERRORS - 1:] = [f"{more} more errors about keys or metrics not listed"]
    return req


def _metrics(sensor: str, value: object, errors: list[str]) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        errors.append(f"Metrics for the sensor {sensor} must be a list of strings")
        return []
    if not value:
        errors.append(f"No metric requested for the sensor {sensor}")
        return []
    metrics: list[str] = []
    for metric in value:
        if metric not in METRICS:
            errors.append(f"Unexpected metric {metric} to compute for the sensor {sensor}")
        elif metric in metrics:
            errors.append(f"Duplicated metric {metric} for the sensor {sensor}")
        else:
            metrics.append(metric)
    return metrics
