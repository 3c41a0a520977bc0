"""Readings written in Kafka transactions (as exactly-once producers and connectors write them):
each commit or abort leaves a marker at an offset of its own, stamped when it was written, not
with the readings' time. Windows equal the reference of the committed readings, the aborted
ones left out, with and without the window cache, for readings written long after their time
(every marker stamped past every window) and as they happen."""

from __future__ import annotations

import random
import time

import pytest
from confluent_kafka import Producer

from iotpipe.core import wire
from iotpipe.core.wire import Reading
from iotpipe.query.app import create_app
from iotpipe.query.timestamps import format_ms
from kafka_helpers import create_topics, reference, settings_for, unique_prefix

ALL = ["count", "min", "max", "average", "sum", "stddev"]
PARTITIONS, TRANSACTIONS, PER_TRANSACTION = 2, 12, 40


def _write_in_transactions(bootstrap: str, topic: str, base: int, rng: random.Random
                           ) -> list[Reading]:
    """Readings of 4 devices, 100 ms apart, in transactions of PER_TRANSACTION; every third
    transaction aborted. Returns the committed readings."""
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": unique_prefix() + "tx"})
    p.init_transactions(30)
    committed: list[Reading] = []
    n = 0
    for t in range(TRANSACTIONS):
        p.begin_transaction()
        batch = [Reading(f"d{(n + k) % 4}", "humidity", (n + k) // 4, base + (n + k) * 100,
                         rng.randrange(-500, 500)) for k in range(PER_TRANSACTION)]
        n += PER_TRANSACTION
        for r in batch:
            p.produce(topic, wire.encode(r), wire.key(r), timestamp=r.ts)
        if t % 3 == 2:  # written first: an abort drops what the producer has not sent yet
            assert p.flush(30) == 0
            p.abort_transaction(30)
        else:
            p.commit_transaction(30)
            committed += batch
    return committed


@pytest.mark.parametrize("written", ["late", "live"])
@pytest.mark.parametrize("cache", ["250000", "0"])
def test_windows_over_transactional_writes_equal_reference(bootstrap: str, written: str,
                                                           cache: str) -> None:
    settings = settings_for(bootstrap, unique_prefix(), sensors="humidity",
                            query_readers="0", query_cache_messages=cache)
    create_topics(settings, partitions=PARTITIONS)
    span = TRANSACTIONS * PER_TRANSACTION * 100
    # late: readings of 2023, so each marker is stamped long after every reading; live: up to
    # now, so the windows near the end are still open to late readings
    base = 1_700_000_000_000 if written == "late" else int(time.time() * 1000) - span
    rng = random.Random(f"{written}-{cache}")
    committed = _write_in_transactions(bootstrap, settings.topic("humidity"), base, rng)
    client = create_app(settings).test_client()
    windows = [(base, base + span), (base - 5_000, base + 100)]
    windows += [(lo, lo + rng.choice([0, 999, 5_000, 20_000]))
                for lo in (base + rng.randrange(span) for _ in range(8))]
    for lo, hi in windows + windows:  # asked again: through the cache when it is on
        body = {"humidity": ALL, "from": format_ms(lo), "to": format_ms(hi)}
        resp = client.post("/compute/metrics", json=body)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        got, want = resp.get_json()["result"]["humidity"], reference(committed, lo, hi)
        for k, v in want.items():
            assert got[k] == (pytest.approx(v, rel=1e-9) if isinstance(v, float) else v), (
                lo - base, hi - base, k)
    client.application.extensions["iotpipe.service"].close()
