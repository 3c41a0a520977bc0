"""A reader process killed during a scan (e.g. by the kernel, for memory): that request gets a
503 saying so at once, not a wait for its deadline nor a broker error, and the next request is
answered by a new reader process."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
import time

import pytest

from iotpipe.core.wire import Reading
from iotpipe.query import service as service_module
from iotpipe.query.app import create_app
from iotpipe.query.timestamps import format_ms
from kafka_helpers import create_topics, produce, reference, settings_for, unique_prefix

T0 = 1_700_000_000_000


@pytest.mark.faults
def test_a_reader_process_lost_mid_scan_is_a_503_then_replaced(
        bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "SMALL_SCAN", 0)  # every window goes to the reader
    settings = settings_for(bootstrap, unique_prefix(), sensors="temperature",
                            query_readers="1", query_cache_messages="0")
    create_topics(settings)
    readings = [Reading(f"d{i % 5}", "temperature", i // 5, T0 + i * 100, i % 89)
                for i in range(3000)]
    produce(bootstrap, settings.topic("temperature"), readings)
    lo, hi = T0 + 20_000, T0 + 250_000
    body = {"temperature": ["count", "max", "sum"], "from": format_ms(lo), "to": format_ms(hi)}
    want = {"temperature": {k: reference(readings, lo, hi)[k] for k in ("count", "max", "sum")}}

    before = set(multiprocessing.active_children())
    app = create_app(settings)
    service = app.extensions["iotpipe.service"]
    try:
        service.scans.warm_up()
        (reader,) = set(multiprocessing.active_children()) - before
        client = app.test_client()
        assert client.post("/compute/metrics", json=body).get_json()["result"] == want

        submitted = threading.Event()
        submit = service.scans.submit

        def noted_submit(*args: object) -> cf.Future[object]:
            future = submit(*args)
            submitted.set()
            return future

        monkeypatch.setattr(service.scans, "submit", noted_submit)
        assert reader.pid is not None
        os.kill(reader.pid, signal.SIGSTOP)  # the scan waits in it, then it is killed
        with cf.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            asked = pool.submit(client.post, "/compute/metrics", json=body)
            assert submitted.wait(settings.query_deadline_s)
            os.kill(reader.pid, signal.SIGKILL)
            resp = asked.result(settings.query_deadline_s)
        assert time.monotonic() - started < settings.query_deadline_s / 2
        assert resp.status_code == 503
        assert resp.get_json() == {
            "result": {}, "errors": ["A reader process of the query service stopped, try again"]}

        resp = client.post("/compute/metrics", json=body)
        assert resp.status_code == 200 and resp.get_json()["result"] == want
        (replacement,) = set(multiprocessing.active_children()) - before
        assert replacement.pid != reader.pid
    finally:
        service.close()
