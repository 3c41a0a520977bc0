"""HTTP routes of the query service (the prototype's contract, byte-compatible)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from importlib import resources

from flask import Blueprint, Response, current_app, g, request

from iotpipe.query import metrics as prom
from iotpipe.query.errors import BrokerUnavailable, ReaderLost, ScanTimeout
from iotpipe.query.request import RequestError, parse_body, validate
from iotpipe.query.service import WindowMetricsService

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__)
RECEIVED = "iotpipe.received"  # WSGI environ: time.time() when the front had the whole request
HEALTHY = json.dumps({"status": "Healthy!"})


def envelope(result: Mapping[str, object], errors: list[str], status: int) -> Response:
    """The prototype's body: json.dumps({'result': ..., 'errors': ...}) with default spacing."""
    body = json.dumps({"result": result, "errors": errors}, allow_nan=False)
    return Response(body, status=status, mimetype="application/json")


@bp.route("/health", methods=["GET"])
def health() -> Response:
    return Response(HEALTHY, mimetype="application/json")


@bp.route("/openapi.json", methods=["GET"])
def openapi() -> Response:
    doc = resources.files("iotpipe.query").joinpath("openapi.json").read_text()
    return Response(doc, mimetype="application/json")


@bp.route("/compute/metrics", methods=["POST"])
def compute_metrics() -> Response:
    service: WindowMetricsService = current_app.extensions["iotpipe.service"]
    settings = service.settings
    try:
        if not request.is_json:  # application/json or application/*+json, as the prototype
            raise RequestError(415, "Content-Type must be application/json (or "
                                    "application/*+json)")
        # refused unread by its declared length: the front gives every body its real length,
        # and Flask's stream never reads past it (or the limit, MAX_CONTENT_LENGTH)
        if (request.content_length or 0) > settings.max_body_bytes:
            raise RequestError(413, f"Request body is larger than {settings.max_body_bytes} bytes")
        body = parse_body(request.stream.read(settings.max_body_bytes + 1))
        req = validate(body, settings.sensors, settings.max_window_s)
        result = service.compute(req, g.received) if req.operations else {}
    except RequestError as e:
        return envelope({}, [str(e)], e.status)
    except BrokerUnavailable as e:
        log.warning("broker unavailable: %s", e)
        prom.BROKER_ERRORS.inc()
        return envelope({}, ["Kafka broker unavailable, try again later"], 503)
    except ReaderLost as e:
        log.error("%s", e)
        return envelope({}, ["A reader process of the query service stopped, try again"], 503)
    except ScanTimeout as e:
        log.warning("query timed out: %s", e)
        return envelope({}, [f"The window could not be read within "
                             f"{settings.query_deadline_s:g} seconds"], 504)
    return envelope(result, req.errors, 400 if req.errors and not result else 200)
