"""gunicorn settings of the query service, all from IOTPIPE_* variables (see README)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from iotpipe.core.settings import Settings

_s = Settings.from_env()

bind = f"{_s.query_host}:{_s.query_port}"
workers = _s.query_workers
# an asyncio worker reads requests; Flask runs in a pool of IOTPIPE_QUERY_THREADS threads
# once a request is whole (see iotpipe.query.front)
worker_class = "iotpipe.query.front.QueryWorker"
worker_connections = _s.query_max_connections
asgi_lifespan = "off"
# uvloop, not asyncio's pure-Python loop: the loop shares the worker's GIL with the Flask
# threads, and asyncio's spent most of it under load (a dependency; a test checks it is used)
asgi_loop = "uvloop"
timeout = int(_s.query_deadline_s) + 10  # a worker is killed only well after its deadline
graceful_timeout = 10
keepalive = 5
limit_request_line = 4094
limit_request_fields = 50
accesslog = "-"
errorlog = "-"
loglevel = _s.log_level.lower()
proc_name = "iotpipe-query"
# gunicornc is not used; its socket would want a writable $HOME (read-only in the image)
control_socket_disable = True
if _s.log_format == "json":
    access_log_format = json.dumps({
        "remote": "%(h)s", "method": "%(m)s", "path": "%(U)s", "status": "%(s)s",
        "bytes": "%(B)s", "duration_ms": "%(M)s", "agent": "%(a)s"})


_metrics_server: Any = None


def when_ready(server: Any) -> None:
    """/metrics of all workers on their own port: no API token, never routed by an Ingress."""
    global _metrics_server
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    _metrics_server, _ = start_http_server(_s.query_metrics_port, addr=_s.metrics_host,
                                           registry=registry)


def post_fork(server: Any, worker: Any) -> None:
    """A worker lets go of the master's /metrics socket (inherited by the fork): a master
    killed with -9 then frees that port at once, not once its orphaned workers have exited,
    and its restart can bind it."""
    if _metrics_server is not None:
        _metrics_server.socket.close()


ROLLUPS_LOAD_S = 30.0  # at most (within the pod's startup probe), then read raw meanwhile


def post_worker_init(worker: Any) -> None:
    """Start the reader processes and read the rollup index before the first request arrives
    (other workers already up take the requests meanwhile)."""
    service = worker.asgi.flask.extensions.get("iotpipe.service")
    if service is None:
        return
    service.scans.warm_up()
    if service.rollups is not None and not worker.loop.run_until_complete(
            _rollups_loaded(worker, service.rollups.loaded)):
        worker.log.warning("rollup topic not read within %gs: windows are read from the "
                           "readings until it is", ROLLUPS_LOAD_S)


async def _rollups_loaded(worker: Any, loaded: Callable[[], bool]) -> bool:
    """Wait in the worker's event loop, where its stop signals are handled (a stopped worker
    waits no longer), sending its heartbeat to the master meanwhile."""
    deadline = time.monotonic() + ROLLUPS_LOAD_S
    while not loaded():
        if not worker.alive or time.monotonic() >= deadline:
            return not worker.alive
        worker.notify()
        await asyncio.sleep(0.2)
    return True


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
