"""Broker down: the API answers 503 within its timeout (except for a window it already holds in
its cache, also once its list of the topic's partitions is due again), then recovers by
itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from iotpipe.core.wire import Reading
from iotpipe.localstack.kafka_broker import KafkaBroker, free_port
from iotpipe.query import reader as reader_module
from iotpipe.query.app import create_app
from iotpipe.query.timestamps import format_ms
from kafka_helpers import create_topics, produce, reference, settings_for

T0 = 1_700_000_000_000


@pytest.mark.faults
@pytest.mark.parametrize("readers", ["0", "1"])
def test_503_while_broker_down_then_recovers(tmp_path: Path, readers: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    broker = KafkaBroker(tmp_path / "kafka", port=free_port()).start()
    try:
        settings = settings_for(broker.bootstrap, sensors="temperature",
                                kafka_timeout_seconds="2", query_readers=readers)
        create_topics(settings, partitions=2)
        readings = [Reading(f"d{i % 4}", "temperature", i // 4, T0 + i * 100, i % 97)
                    for i in range(2000)]
        for part in (0, 1):  # devices d0, d2 in one partition, d1, d3 in the other
            produce(broker.bootstrap, "temperature",
                    [r for r in readings if int(r.device[1:]) % 2 == part], part)
        app = create_app(settings)
        client = app.test_client()
        body = {"temperature": ["count", "max", "sum"], "from": format_ms(T0 + 10_000),
                "to": format_ms(T0 + 150_000)}
        want = {k: v for k, v in reference(readings, T0 + 10_000, T0 + 150_000).items()
                if k in body["temperature"]}
        for _ in range(2):  # asked again: kept in the window cache
            assert client.post("/compute/metrics", json=body).get_json()["result"] == {
                "temperature": want}

        other = body | {"from": format_ms(T0 + 5_000)}  # starts before what is held
        other_want = {k: v for k, v in reference(readings, T0 + 5_000, T0 + 150_000).items()
                      if k in body["temperature"]}
        assert other_want != want

        broker.kill()
        resp = client.post("/compute/metrics", json=body)  # closed and held: from memory
        assert resp.status_code == 200
        assert resp.get_json()["result"] == {"temperature": want}
        # the partitions are listed again (every 30 s): that fails, the ones known stay
        monkeypatch.setattr(reader_module, "PARTITIONS_MAX_AGE_S", 0.0)
        resp = client.post("/compute/metrics", json=body)
        assert resp.status_code == 200
        assert resp.get_json()["result"] == {"temperature": want}
        started = time.monotonic()
        resp = client.post("/compute/metrics", json=other)
        elapsed = time.monotonic() - started
        assert resp.status_code == 503
        assert resp.get_json() == {"result": {},
                                   "errors": ["Kafka broker unavailable, try again later"]}
        assert elapsed < settings.query_deadline_s  # answered by the broker-call timeout

        broker.start()
        deadline = time.monotonic() + 60
        while True:  # the service reconnects by itself; no restart of the app
            resp = client.post("/compute/metrics", json=other)
            if resp.status_code == 200 or time.monotonic() > deadline:
                break
            assert resp.status_code == 503
            time.sleep(0.5)
        assert resp.status_code == 200
        assert resp.get_json()["result"] == {"temperature": other_want}
        app.extensions["iotpipe.service"].close()
    finally:
        broker.stop()
