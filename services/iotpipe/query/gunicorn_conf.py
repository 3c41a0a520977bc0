"""gunicorn settings of the query service, all from IOTPIPE_* variables (see README)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess

from iotpipe.core.exporter import serve_metrics
from iotpipe.core.settings import Settings

_s = Settings.from_env()

bind = _s.query_address
workers = _s.query_workers
# an asyncio worker reads requests; Flask runs in a pool of IOTPIPE_QUERY_THREADS threads
# once a request is whole (see iotpipe.query.front)
worker_class = "iotpipe.query.front.QueryWorker"
worker_connections = _s.query_max_connections
asgi_lifespan = "off"
# uvloop, not asyncio's pure-Python loop: the loop shares the worker's GIL with the Flask
# threads, and asyncio's spent most of it under load (a dependency; a test checks it is used)
asgi_loop = "uvloop"
# a worker is killed only well after its deadline; gunicorn also stops waiting for a body's next
# bytes after this long (http.disconnect), so it must not cut the front's read deadline short
timeout = int(max(_s.query_deadline_s, _s.query_read_deadline_max_s)) + 10
# a stop lets the requests under way finish: a body read and the request's deadline
graceful_timeout = _s.query_stop_s
# a request whose client left is dropped at once, not run for nobody (queued for a thread)
asgi_disconnect_grace_period = 0
keepalive = 5
# the pure Python parser, whatever else is installed: the front names its errors (front.py)
http_parser = "python"
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
    _metrics_server, _ = serve_metrics("query", _s.metrics_host, _s.query_metrics_port,
                                       registry)


def post_fork(server: Any, worker: Any) -> None:
    """A worker closes the master's /metrics socket it inherited: a master killed with -9 then
    frees that port at once for its restart, not once its orphaned workers have exited."""
    if _metrics_server is not None:
        _metrics_server.socket.close()


READY_S = 30.0  # at most (within the pod's startup probe), then serve: read raw meanwhile


def post_worker_init(worker: Any) -> None:
    """Connect the consumers, start the reader processes and read the rollup index before the
    first request; waited for in the worker's event loop, where its stop signals are handled."""
    service = worker.asgi.flask.extensions.get("iotpipe.service")
    if service is None:
        return
    # a daemon thread: a worker stopped meanwhile exits without waiting for it
    warm_up: cf.Future[None] = cf.Future()
    threading.Thread(target=_run, args=(warm_up, service.scans.warm_up), name="warm-up",
                     daemon=True).start()
    rollups = service.rollups
    worker.loop.run_until_complete(_ready(worker, lambda: warm_up.done() and (
        rollups is None or rollups.loaded.is_set())))
    if not worker.alive:
        return
    if warm_up.done():
        warm_up.result()  # a reader process that could not start fails the worker, as before
    else:
        worker.log.warning("consumers and reader processes not ready within %gs", READY_S)
    if rollups is not None and not rollups.loaded.is_set():
        worker.log.warning("rollup topic not read within %gs: windows are read from the "
                           "readings until it is", READY_S)


def _run(future: cf.Future[None], fn: Callable[[], None]) -> None:
    try:
        fn()
    except BaseException as e:  # handed to the waiting worker, which raises it
        future.set_exception(e)
    else:
        future.set_result(None)


async def _ready(worker: Any, ready: Callable[[], bool]) -> None:
    """Wait until `ready()`, READY_S at most, or until the worker is stopped, sending its
    heartbeat to the master meanwhile."""
    deadline = time.monotonic() + READY_S
    while not ready() and worker.alive and time.monotonic() < deadline:
        worker.notify()
        await asyncio.sleep(0.2)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
