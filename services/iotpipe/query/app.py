"""Flask application factory of the query service (`create_app`, as in the Flask tutorial)."""

from __future__ import annotations

import hmac
import json
import logging
import re
import time

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from iotpipe.core.logs import configure_logging
from iotpipe.core.settings import Settings, SettingsError
from iotpipe.query import metrics as prom
from iotpipe.query.api import RECEIVED, bp, envelope
from iotpipe.query.service import WindowMetricsService

log = logging.getLogger(__name__)
_SENDABLE = re.compile(rb"[!-~]+")  # printable ASCII, no space: a header carries it as it is
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def read_token(settings: Settings) -> bytes | None:
    """The API token of IOTPIPE_API_TOKEN_FILE (None: no token); SettingsError if unusable."""
    if not settings.api_token_file:
        return None
    try:
        with open(settings.api_token_file, "rb") as f:
            token = f.read().strip()
    except OSError as e:
        raise SettingsError(f"IOTPIPE_API_TOKEN_FILE: cannot read: {e}") from None
    if len(token) < 16:
        raise SettingsError("IOTPIPE_API_TOKEN_FILE: the token must have 16 characters or more")
    if not _SENDABLE.fullmatch(token):  # a client could never send it as it is
        raise SettingsError("IOTPIPE_API_TOKEN_FILE: the token must be printable ASCII "
                            "without spaces")
    return token


def create_app(settings: Settings | None = None,
               service: WindowMetricsService | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["iotpipe.service"] = service or WindowMetricsService(settings)
    token = read_token(settings)
    app.register_blueprint(bp)

    @app.before_request
    def _start() -> Response | None:
        # when the front had the request whole (the wait for a thread counts too): the
        # latency and the request's deadline count from here
        g.received = request.environ.get(RECEIVED) or time.time()
        if token is None or request.path == "/health":
            return None
        scheme, _, given = request.headers.get("Authorization", "").encode().partition(b" ")
        # the scheme's case does not matter (RFC 9110); the token's does
        if not (scheme.lower() == b"bearer" and hmac.compare_digest(given, token)):
            refused = envelope({}, ["Missing or wrong bearer token"], 401)
            refused.headers["WWW-Authenticate"] = "Bearer"  # (RFC 9110: a 401 says which)
            return refused
        return None

    @app.after_request
    def _observe(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        # a label per method a client makes up would grow the series without bound
        method = request.method if request.method in METHODS else "other"
        prom.REQUESTS.labels(method, route, str(response.status_code)).inc()
        prom.LATENCY.labels(route).observe(time.time() - g.get("received", time.time()))
        return response

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        """404, 405, 413... as JSON envelopes, never HTML, with their headers (a 405's Allow)."""
        answer = envelope({}, [f"{e.name}: {e.description}"], e.code or 500)
        for name, value in e.get_headers():
            if name.lower() != "content-type":
                answer.headers[name] = value
        return answer

    @app.errorhandler(Exception)
    def _crash(e: Exception) -> Response:
        log.exception("unhandled error")
        return envelope({}, ["Internal error; see the service log"], 500)

    log.info("query service ready: %s", json.dumps({"sensors": settings.sensors,
                                                     "bootstrap": settings.kafka.bootstrap}))
    return app
