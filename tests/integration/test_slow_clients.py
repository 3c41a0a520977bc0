"""Slow and stalled clients against the real gunicorn server: they cost a connection, not a
request thread; they end with 408 after the read deadline; excess connections get 503 at once.
Requests the server cannot parse get their error in the API's JSON envelope too."""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack

import pytest

from iotpipe.localstack.processes import http_get, http_post_json
from iotpipe.query.timestamps import parse_ms
from query_dataset import Dataset

DEADLINE_S = 15  # long enough that the stalled clients are still stalled while others are served
MAX_CONNECTIONS = 400
BODY = json.dumps({"humidity": ["average", "max", "count"], "from": "2020-01-13 15:12:00",
                   "to": "2020-01-13 15:13:00"}).encode()
HEAD = (b"POST /compute/metrics HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n")


@pytest.fixture(scope="module")
def server(query_server: Callable[..., AbstractContextManager[str]],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    # one worker: the connection limit is exact
    with query_server(tmp_path_factory.mktemp("slow"), IOTPIPE_QUERY_WORKERS="1",
                      IOTPIPE_QUERY_READ_DEADLINE_SECONDS=str(DEADLINE_S),
                      IOTPIPE_QUERY_MAX_CONNECTIONS=str(MAX_CONNECTIONS)) as url:
        yield url, int(url.rsplit(":", 1)[1])


def expected(dataset: Dataset) -> dict[str, object]:
    lo, hi = parse_ms("2020-01-13 15:12:00"), parse_ms("2020-01-13 15:13:00")
    humidity = [r.value for r in dataset.readings["humidity"] if lo <= r.ts <= hi]
    return {"result": {"humidity": {"average": statistics.mean(humidity), "max": max(humidity),
                                    "count": len(humidity)}}, "errors": []}


def connect(stack: ExitStack, port: int, data: bytes = b"") -> socket.socket:
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
    sock.sendall(data)
    return sock


def read_response(sock: socket.socket, timeout_s: float) -> tuple[int, dict, bytes]:
    """Status, JSON body and what follows it (b"" when the server closed the connection)."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed within the body: {data!r}"
        body += chunk
    rest = sock.recv(65536) if b"connection: close" in head.lower() else b"(kept alive)"
    return int(head.split()[1]), json.loads(body), rest


def nothing_received_yet(sock: socket.socket) -> bool:
    """Still open, and the server has sent nothing on it."""
    sock.settimeout(0)
    try:
        sock.recv(1, socket.MSG_PEEK)  # a byte, or b"": the server closed it
    except BlockingIOError:
        return True
    return False


def test_stalled_clients_leave_the_api_answering_then_get_408(
        server: tuple[str, int], dataset: Dataset) -> None:
    url, port = server
    with ExitStack() as stack:
        # the client (headers, 1 byte of a 1000-byte body) and one stuck in its headers
        stalled = [connect(stack, port, HEAD % 1000 + b"{" if i % 2 else HEAD[:30])
                   for i in range(300)]
        assert http_get(f"{url}/health", 30) == (200, b'{"status": "Healthy!"}')
        for _ in range(3):
            assert http_post_json(f"{url}/compute/metrics", json.loads(BODY), 60) == (
                200, expected(dataset))
        # they were served while every stalled client was still waiting
        assert all(nothing_received_yet(s) for s in stalled)
        for i, sock in enumerate(stalled):
            status, body, rest = read_response(sock, DEADLINE_S + 60)
            part = "body" if i % 2 else "headers"
            assert (status, rest) == (408, b"")
            assert body == {"result": {}, "errors": [
                f"Request Timeout: the {part} did not arrive within {DEADLINE_S} seconds"]}


def test_a_body_trickling_in_within_the_deadline_is_answered(
        server: tuple[str, int], dataset: Dataset) -> None:
    _, port = server
    with ExitStack() as stack:
        sock = connect(stack, port, HEAD % len(BODY))
        for i in range(0, len(BODY), 12):  # about 4 s in all, a third of the deadline
            time.sleep(0.4)
            sock.sendall(BODY[i:i + 12])
        status, body, _ = read_response(sock, 60)
        assert (status, body) == (200, expected(dataset))
        # chunked: the service sees the whole body and its length, as gunicorn's threads did
        chunked = HEAD.replace(b"Content-Length: %d", b"Transfer-Encoding: chunked")
        sock.sendall(chunked + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
        status, body, _ = read_response(sock, 60)
        assert (status, body) == (200, expected(dataset))


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_client_sending_an_oversize_body_whole_reads_its_413(
        server: tuple[str, int], dataset: Dataset, framing: str) -> None:
    """Like Python's http.client, it sends the whole body before it reads: answered unread and
    closed, its connection was reset while it sent (the 413 lost); read and dropped, it reads
    the 413 and the connection stays usable."""
    _, port = server
    pad = b" " * (8 * 65_536)  # 8 times the default limit, sent in one go
    big = BODY[:-1] + b', "pad": "' + pad + b'"}'
    head = HEAD % len(big) if framing == "length" else HEAD.replace(
        b"Content-Length: %d", b"Transfer-Encoding: chunked")
    with ExitStack() as stack:
        sock = connect(stack, port)
        sock.sendall(head + (big if framing == "length" else b"%x\r\n%s\r\n0\r\n\r\n" % (
            len(big), big)))
        status, body, rest = read_response(sock, 60)
        assert (status, body, rest) == (
            413, {"result": {}, "errors": ["Request body is larger than 65536 bytes"]},
            b"(kept alive)")
        sock.sendall(HEAD % len(BODY) + BODY)
        assert read_response(sock, 60)[:2] == (200, expected(dataset))


def test_a_websocket_upgrade_is_answered_as_plain_http(
        server: tuple[str, int], dataset: Dataset) -> None:
    """The API serves no WebSocket; RFC 9110 lets a server ignore Upgrade (gunicorn's answer
    was an empty 403, not the JSON envelope)."""
    upgrade = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    _, port = server
    with ExitStack() as stack:
        sock = connect(stack, port, (HEAD % len(BODY)).replace(b"\r\n\r\n", b"\r\n" + upgrade)
                       + BODY)
        assert read_response(sock, 60)[:2] == (200, expected(dataset))
        sock.sendall(b"GET /compute/metrics HTTP/1.1\r\nHost: t\r\n" + upgrade)
        status, body, _ = read_response(sock, 60)
        assert status == 405 and body["errors"][0].startswith("Method Not Allowed"), body


def test_connections_past_the_limit_are_refused_at_once(server: tuple[str, int]) -> None:
    _, port = server
    with ExitStack() as stack:
        held = [connect(stack, port) for _ in range(MAX_CONNECTIONS)]
        for _ in range(20):
            # 503 at once: not queued, and not the 408 the read deadline would give later
            status, body, rest = read_response(connect(stack, port), DEADLINE_S + 60)
            assert (status, rest) == (503, b"")
            assert body == {"result": {}, "errors": ["Too many open connections, try again later"]}
        # (a few of the last held ones may have been refused if the server still counted a
        # connection of an earlier test that it had not yet seen closed)
        assert all(nothing_received_yet(s) for s in held[:-5])


def test_a_client_that_reads_none_of_its_answers_is_cut_off(server: tuple[str, int]) -> None:
    """gunicorn waits for room to write without a limit: a client that never reads (here a
    thousand pipelined requests for the API's document, far more than the sockets buffer)
    would hold its connection for ever; it is cut off after the read deadline, so reading
    afterwards finds far fewer answers than it asked for (all of them, without the cut)."""
    _, port = server
    asked = 1000
    with ExitStack() as stack:
        hog = stack.enter_context(socket.socket())
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.connect(("127.0.0.1", port))
        hog.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: test\r\n\r\n" * asked)
        time.sleep(DEADLINE_S + 5)  # reading nothing
        hog.settimeout(60)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := hog.recv(1 << 20):
                data += chunk
        assert 0 < data.count(b"HTTP/1.1 200 OK") < asked / 2


def test_a_client_that_closed_its_sending_side_gets_its_answer(
        server: tuple[str, int], dataset: Dataset) -> None:
    _, port = server
    with ExitStack() as stack:
        sock = connect(stack, port, HEAD % len(BODY) + BODY)
        sock.shutdown(socket.SHUT_WR)
        status, body, _ = read_response(sock, 60)
        assert (status, body) == (200, expected(dataset))


@pytest.mark.parametrize(("request_bytes", "status", "error"), [
    (b"garbage\r\n\r\n", 400, "Invalid request line"),
    (b"post /compute/metrics HTTP/1.1\r\nHost: t\r\n\r\n", 400, "Invalid HTTP method: post"),
    (b"GET /health HTTP/1.9\r\nHost: t\r\n\r\n", 400, "Invalid HTTP version: HTTP/1.9"),
    (b"GET /health HTTP/1.1\r\nHo st: t\r\n\r\n", 400, "Invalid header name: Ho st"),
    (b"POST /compute/metrics HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: br\r\n\r\n", 501,
     "Unsupported Transfer-Encoding: br"),
    (b"POST /compute/metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n{", 400,
     "Content-Length"),
    (b"POST /compute/metrics HTTP/1.1\r\nHost: t\r\nContent-Length: " + b"1" * 5000
     + b"\r\n\r\n{", 400, "out of range"),
    (b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n", 431,
     "header field is too large"),
    (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "line is too large"),
])
def test_unparsable_requests_get_the_json_envelope(server: tuple[str, int], request_bytes: bytes,
                                                   status: int, error: str) -> None:
    _, port = server
    with ExitStack() as stack:
        got, body, rest = read_response(connect(stack, port, request_bytes), 30)
    assert (got, rest, body["result"]) == (status, b"", {})
    assert len(body["errors"]) == 1 and error in body["errors"][0], body
