"""The query service's front: what it hands the Flask app once a request is whole."""

from __future__ import annotations

import asyncio
import time

from flask import Flask, request

from iotpipe.core.settings import Settings
from iotpipe.query.api import RECEIVED
from iotpipe.query.front import BufferedApp, Message


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
