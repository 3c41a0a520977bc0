"""The query service's front: what it hands the Flask app once a request is whole."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from flask import Flask, request
from gunicorn.asgi.protocol import ASGIProtocol

from iotpipe.core.settings import Settings
from iotpipe.query import front
from iotpipe.query.api import RECEIVED
from iotpipe.query.app import create_app
from iotpipe.query.front import BoundedProtocol, BufferedApp, Message, _read_deadline


def _serve(app: BufferedApp, body: bytes) -> list[Message]:
    """One POST through the ASGI app; the messages it sent back."""
    scope = {"type": "http", "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/stamp", "raw_path": b"/stamp", "query_string": b"", "root_path": "",
             "headers": [(b"content-length", b"%d" % len(body))],
             "server": ("127.0.0.1", 5000), "client": ("127.0.0.1", 40000)}
    parts = [{"type": "http.request", "body": body[:3], "more_body": True},
             {"type": "http.request", "body": body[3:], "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.sleep(0.05)  # the body trickles in
        return parts.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_flask_is_told_when_the_request_was_whole() -> None:
    flask = Flask(__name__)

    @flask.post("/stamp")
    def stamp() -> dict[str, object]:
        return {"received": request.environ[RECEIVED], "body": request.get_data(as_text=True)}

    app = BufferedApp(flask, Settings.from_env({}))
    before = time.time()
    start, body = _serve(app, b"hello world")
    after = time.time()
    assert start["status"] == 200
    answer = flask.json.loads(body["body"])
    assert answer["body"] == "hello world"
    assert before + 0.1 <= answer["received"] <= after  # after the last part, not the first


def test_health_is_answered_while_every_thread_is_busy() -> None:
    """The readiness probe's /health does not queue behind requests waiting for a thread (a
    broker away holds each for its timeout): a busy pod stays in its Service."""
    flask = Flask(__name__)
    release = threading.Event()

    @flask.post("/stamp")
    def slow() -> dict[str, object]:
        release.wait(30)
        return {}

    app = BufferedApp(flask, Settings.from_env({"IOTPIPE_QUERY_THREADS": "1"}))

    def scope(method: str, path: str) -> Message:
        return {"type": "http", "http_version": "1.1", "method": method, "scheme": "http",
                "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                "headers": [], "server": ("127.0.0.1", 5000), "client": ("127.0.0.1", 1)}

    async def ask(method: str, path: str) -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        await app(scope(method, path), receive, send)
        return sent

    async def both() -> tuple[list[Message], list[Message], bool]:
        busy = [asyncio.create_task(ask("POST", "/stamp")) for _ in range(2)]
        await asyncio.sleep(0.2)  # one holds the only thread, the other waits for it
        health = await asyncio.wait_for(ask("GET", "/health"), 5)
        still_busy = not any(task.done() for task in busy)
        release.set()
        await asyncio.gather(*busy)
        return health, (await busy[0]), still_busy

    health, answered, still_busy = asyncio.run(both())
    assert still_busy and answered[0]["status"] == 200
    assert health[0]["status"] == 200 and json.loads(health[1]["body"]) == {"status": "Healthy!"}
    assert (b"content-type", b"application/json") in health[0]["headers"]


class _NoService:
    """The body is answered before any window is read."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings


def _post(headers: list[tuple[bytes, bytes]], parts: list[bytes]) -> tuple[int, list[str], int]:
    """A POST through the front and the API with a 1,000-byte body limit and a 0.3 s read
    deadline; the body arrives in `parts`, then stalls. Status, errors and receive() calls."""
    settings = Settings.from_env({"IOTPIPE_MAX_BODY_BYTES": "1000",
                                  "IOTPIPE_QUERY_READ_DEADLINE_SECONDS": "0.3"})
    app = BufferedApp(create_app(settings, cast(Any, _NoService(settings))), settings)
    scope = {"type": "http", "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/compute/metrics", "raw_path": b"/compute/metrics", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"), *headers],
             "server": ("127.0.0.1", 5000), "client": ("127.0.0.1", 40000)}
    sent: list[Message] = []
    asked = 0

    async def receive() -> Message:
        nonlocal asked
        asked += 1
        if asked > len(parts):
            await asyncio.sleep(60)  # the client stalls
        return {"type": "http.request", "body": parts[asked - 1], "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])["errors"], asked


TOO_LARGE = ["Request body is larger than 1000 bytes"]


def test_a_slow_body_known_to_be_too_large_gets_413_not_408() -> None:
    """By its declared length, or by the bytes it has sent (chunked): told it was slow, the
    client would send it again."""
    declared = [(b"content-length", b"5000")]
    assert _post(declared, [b"x" * 500])[:2] == (413, TOO_LARGE)
    assert _post([], [b"x" * 600, b"x" * 600])[:2] == (413, TOO_LARGE)
    assert _post([], [b"x" * 600])[:2] == (408, [
        "Request Timeout: the body did not arrive within 0.3 seconds"])


def test_a_client_waiting_for_100_continue_is_refused_before_it_sends() -> None:
    """It sends its body only once asked for it (gunicorn asks at the first receive())."""
    expects = [(b"content-length", b"5000"), (b"expect", b"100-continue")]
    assert _post(expects, []) == (413, TOO_LARGE, 0)


def test_each_connection_is_given_the_read_deadline_and_up_to_a_fifth_more(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections opened together (stalled ones reopened together after their 408s) are not
    all closed together: their deadlines are spread, none shorter than the setting, for the
    headers (from connecting) and the body alike."""
    settings = Settings.from_env({"IOTPIPE_QUERY_READ_DEADLINE_SECONDS": "10"})
    drawn = [_read_deadline(settings) for _ in range(1000)]
    assert all(10 <= d <= 12 for d in drawn)
    assert sum(d < 11 for d in drawn) > 300 and sum(d > 11 for d in drawn) > 300

    given: list[float] = []

    def recorded(settings: Settings) -> float:
        given.append(_read_deadline(settings))
        return given[-1]

    monkeypatch.setattr(front, "_read_deadline", recorded)
    timers: list[float] = []
    monkeypatch.setattr(ASGIProtocol, "connection_made", lambda self, transport: None)
    connection = BoundedProtocol.__new__(BoundedProtocol)
    connection.worker = SimpleNamespace(nr_conns=1, loop=SimpleNamespace(
        call_later=lambda delay, *args: timers.append(delay)))
    connection.cfg = SimpleNamespace(worker_connections=10)
    connection.app = SimpleNamespace(settings=settings)
    connection.connection_made(cast(Any, None))
    assert timers == given and len(given) == 1  # the headers' deadline
    status, _, _ = _post([(b"content-length", b"10")], [b"{"])  # the body's
    assert status == 408 and len(given) == 2 and 0.3 <= given[1] <= 0.36
