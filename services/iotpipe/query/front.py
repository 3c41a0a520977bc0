"""The query service's front: an event loop reads each request whole, then a thread runs Flask.

gunicorn's thread worker hands a connection to a thread at its first byte and the thread then
blocks until the body is in, so a few stalled clients held every thread. gunicorn's asyncio
worker reads requests in its event loop, where a slow client costs a connection only:
`BufferedApp` runs Flask once a body is whole, `BoundedProtocol` adds what that worker lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any, cast

from a2wsgi.wsgi import build_environ
from flask import Flask
from gunicorn.asgi.parser import (
    InvalidHeaderName,
    InvalidHTTPVersion,
    InvalidRequestMethod,
    UnsupportedTransferCoding,
)
from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

from iotpipe.core.settings import Settings
from iotpipe.query import metrics as prom
from iotpipe.query.api import HEALTHY, RECEIVED, envelope
from iotpipe.query.app import create_app

log = logging.getLogger(__name__)
Message = dict[str, Any]
# a2wsgi's hints want its own TypedDicts; the scope here is gunicorn's plain dict
_environ = cast(Callable[..., dict[str, Any]], build_environ)
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BufferedApp:
    """ASGI app: the body is read whole (or past the size limit), then Flask runs in a thread.
    Flask sees the body's real Content-Length (chunked bodies too), so its 413 check keeps
    working. The thread hands back the whole answer in one step: no thread waits on the event
    loop, which matters when the threads keep the GIL busy."""

    def __init__(self, flask: Flask, settings: Settings) -> None:
        self.flask, self.settings = flask, settings
        self.threads = ThreadPoolExecutor(settings.query_threads, thread_name_prefix="flask")

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1000})
        if scope["method"] == "GET" and scope["path"] == "/health":
            # answered here, not behind the requests waiting for a Flask thread: a busy pod
            # taken out of its Service (readiness) would only move its load to the others
            prom.REQUESTS.labels("GET", "/health", "200").inc()
            return await _send_json(send, 200, HEALTHY.encode())
        limit = self.settings.max_body_bytes
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        oversize = declared.isdigit() and int(declared) > limit  # Flask answers 413 unread
        # a client that waits for "100 Continue" sends nothing unless asked: none is drained
        waits = any(k == b"expect" for k, _ in scope["headers"])
        body = bytearray()
        if not (oversize and (waits or int(declared) > DRAINED * limit)):
            whole = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_read_deadline(self.settings)):
                    whole = await _read_body(receive, limit, body)
            # late (or the client left, and the answer goes nowhere); a body known to be too
            # large is answered 413 all the same
            if not (whole or oversize or len(body) > limit):
                error = ("Request Timeout: the body did not arrive within "
                         f"{self.settings.query_read_deadline_s:g} seconds")
                return await _send_json(send, 408, envelope({}, [error], 408).get_data(),
                                        (b"connection", b"close"))  # (as Flask would send it)
            if not oversize:  # Flask sees the body's real length (chunked bodies too)
                headers = [(k, v) for k, v in scope["headers"]
                           if k not in (b"content-length", b"transfer-encoding")]
                scope = scope | {"headers": [*headers, (b"content-length", b"%d" % len(body))]}
        environ = _environ(scope, io.BytesIO(bytes(body)))
        environ.pop("HTTP_UPGRADE", None)  # (Werkzeug refuses a WebSocket's to plain routes)
        environ[RECEIVED] = time.time()  # the deadline counts from here, not from a free thread
        status, headers, content = await asyncio.get_running_loop().run_in_executor(
            self.threads, self._flask, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _flask(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: object = None) -> Callable[[bytes], None]:
            started[:] = [int(status.split(" ", 1)[0]),
                          [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]]
            return chunks.append
        answer = self.flask(environ, start_response)
        try:
            chunks.extend(answer)
        finally:
            getattr(answer, "close", lambda: None)()
        return started[0], started[1], b"".join(chunks)


def _read_deadline(settings: Settings) -> float:
    """A connection's deadline for its headers, or its body: between the read deadline and a
    fifth more, so that connections opened together (a burst of clients, or all those one
    deadline closed, opening again) are not all closed in one step of the event loop, which
    held up every other answer of the worker, `/health`'s too."""
    return random.uniform(settings.query_read_deadline_s, settings.query_read_deadline_max_s)


# a body past the size limit is still read, and dropped, up to this many times the limit: a
# client that sends its whole body before it reads then gets its 413 (a connection closed with
# bytes unread is reset, and the answer may be lost)
DRAINED = 16


async def _read_body(receive: Receive, limit: int, body: bytearray) -> bool:
    """Read the body into `body`, at most limit + 1 bytes of it (see DRAINED for the rest);
    False if the client disconnected."""
    size = 0
    while size <= DRAINED * limit:
        message = await receive()
        if message["type"] != "http.request":
            return False
        chunk = message.get("body", b"")
        size += len(chunk)
        body += chunk[:limit + 1 - len(body)]
        if not message.get("more_body"):
            break
    return True


async def _send_json(send: Send, status: int, body: bytes, *headers: tuple[bytes, bytes]
                     ) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(body)), *headers]})
    await send({"type": "http.response.body", "body": body})


# the parse errors of gunicorn's parser whose message is the bad token alone ("post")
BARE_TOKEN_ERRORS = {InvalidRequestMethod: "Invalid HTTP method",
                     InvalidHTTPVersion: "Invalid HTTP version",
                     InvalidHeaderName: "Invalid header name",
                     UnsupportedTransferCoding: "Unsupported Transfer-Encoding"}


class BoundedProtocol(ASGIProtocol):
    """gunicorn's HTTP/1 connection with a per-worker connection limit, a deadline for a new
    connection's first headers (kept-alive ones have gunicorn's keep-alive timer), and the same
    for a client that stops reading its answers (gunicorn would wait to write for ever)."""

    _deadline: asyncio.TimerHandle | None = None
    _write_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.worker.nr_conns > self.cfg.worker_connections:
            self._refuse(503, "Too many open connections, try again later")
            return
        seconds = self.app.settings.query_read_deadline_s
        self._deadline = self.worker.loop.call_later(_read_deadline(self.app.settings),
                                                     self._headers_late, seconds)

    def _on_headers_complete(self) -> bool:
        self._deadline = _cancel(self._deadline)
        return super()._on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = _cancel(self._deadline)
        self._write_deadline = _cancel(self._write_deadline)
        super().connection_lost(exc)

    def _is_websocket_upgrade(self, request: object) -> bool:
        """The API serves no WebSocket: a request asking to switch to one is answered as plain
        HTTP (RFC 9110 lets a server ignore Upgrade; gunicorn's answer was an empty 403)."""
        return False

    def eof_received(self) -> bool | None:
        """A client that closed its sending side after its request's headers still gets the
        answer (True: keep the connection); an idle one is closed as before."""
        return True if self._current_request is not None else None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            seconds = self.app.settings.query_read_deadline_s
            self._write_deadline = self.worker.loop.call_later(seconds, self._not_reading,
                                                               seconds)

    def resume_writing(self) -> None:
        self._write_deadline = _cancel(self._write_deadline)
        super().resume_writing()

    def _not_reading(self, seconds: float) -> None:
        self._write_deadline = None
        log.info("a client read nothing of its answers for %gs; closing", seconds)
        if self.transport is not None:
            self.transport.abort()

    def _headers_late(self, seconds: float) -> None:
        self._deadline = None
        if self._closed or self._current_request is not None:
            return
        log.debug("headers not complete within %gs; closing", seconds)
        self._refuse(408, f"Request Timeout: the headers did not arrive within {seconds:g} "
                          "seconds")

    def _handle_h1c_exception(self, e: Exception) -> bool:
        """Also a header value gunicorn's parser cannot convert (a Content-Length of more digits
        than Python turns into an int): 400, not a dropped connection and a logged traceback."""
        if super()._handle_h1c_exception(e):
            return True
        if not isinstance(e, ValueError):
            return False
        self._refuse(400, "Invalid request: a header's value is out of range")
        return True

    def _refuse(self, status: int, error: str) -> None:
        """Answer with the JSON envelope and close, whatever the client has sent so far."""
        self._send_error_response(status, error)
        self._close_transport()
        if self._request_ready is not None:
            self._request_ready.set()  # the connection's task sees it is closed and ends

    def _send_error_response(self, status: int, message: str,
                             extra_headers: Iterable[tuple[str, str]] = ()) -> None:
        """Also gunicorn's answer to a request it cannot parse (bad framing, a line or headers
        too long): in the API's JSON envelope, not plain text, and saying what the part it
        quotes is (its parser's error may be the bad token alone: "post")."""
        kind = BARE_TOKEN_ERRORS.get(type(sys.exc_info()[1]))
        if kind is not None:
            message = f"{kind}: {message}"
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:  # (gunicorn sends only standard codes)
            reason = "Error"
        body = envelope({}, [message], status).get_data()
        extra = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
        self._safe_write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
                         .encode("latin-1") + body)


def _cancel(timer: asyncio.TimerHandle | None) -> asyncio.TimerHandle | None:
    """Cancel a deadline if one is set; None, for the attribute that held it."""
    if timer is not None:
        timer.cancel()
    return None


class QueryWorker(gasgi.ASGIWorker):
    """gunicorn's asyncio worker serving `BoundedProtocol` connections."""

    def init_process(self) -> None:
        # the worker builds its protocol by this module-level name; set in the worker process
        gasgi.ASGIProtocol = BoundedProtocol
        super().init_process()


def create_front() -> BufferedApp:
    """gunicorn's app: the Flask app of `create_app`, behind the buffering front."""
    settings = Settings.from_env()
    return BufferedApp(create_app(settings), settings)
