"""The /metrics endpoint of an app on its own port."""

from __future__ import annotations

import sys
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


def serve_metrics(app: str, host: str, port: int, registry: CollectorRegistry
                  ) -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry`; a port another program holds stops the app with one clear line."""
    try:
        return start_http_server(port, host, registry=registry)
    except OSError as e:
        sys.exit(f"iotpipe {app}: cannot serve /metrics on {host}:{port}: {e.strerror}")
