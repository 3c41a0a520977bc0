"""The window cache on the real broker: windows over a topic that keeps growing (closed windows
and windows still open to late readings) equal the reference, with and without the cache."""

from __future__ import annotations

import random
import time

import pytest

from iotpipe.core.wire import Reading
from iotpipe.query.app import create_app
from iotpipe.query.timestamps import format_ms
from kafka_helpers import create_topics, produce, reference, settings_for, unique_prefix

ROUNDS, ROUND_S, DEVICES = 5, 30, 3
ALL = ["count", "min", "max", "average", "sum", "stddev"]


def _round(rng: random.Random, base: int, n: int) -> list[Reading]:
    """ROUND_S seconds of readings from DEVICES devices, a few repeated, shuffled by at most a
    few seconds (within the allowed lateness)."""
    out = [Reading(f"d{d}", "temperature", n * ROUND_S + s, base + (n * ROUND_S + s) * 1000
                   + d * 7, rng.randrange(0, 101))
           for s in range(ROUND_S) for d in range(DEVICES)]
    out += rng.sample(out, 5)
    return sorted(out, key=lambda r: r.ts + rng.randrange(0, 3000))


@pytest.mark.parametrize("windows", ["closed", "open"])
@pytest.mark.parametrize("cache", ["250000", "0"])
def test_windows_over_a_growing_topic_equal_reference(bootstrap: str, windows: str,
                                                      cache: str) -> None:
    settings = settings_for(bootstrap, unique_prefix(), sensors="temperature",
                            query_readers="0", query_cache_messages=cache)
    create_topics(settings, partitions=2)
    now = int(time.time() * 1000)
    # open: readings up to now, so `to` + lateness is still ahead; closed: readings in 2023
    base = now - ROUNDS * ROUND_S * 1000 if windows == "open" else 1_700_000_000_000
    app = create_app(settings)
    client = app.test_client()
    rng = random.Random(f"{windows}-{cache}")
    produced: list[Reading] = []
    asked = 0
    for n in range(ROUNDS):
        batch = _round(rng, base, n)
        produce(bootstrap, settings.topic("temperature"), batch)
        produced += batch
        for _ in range(6):
            lo = base + rng.randrange(-2000, (n + 1) * ROUND_S * 1000)
            hi = lo + rng.choice([0, 999, 10_000, 45_000, 200_000])
            body = {"temperature": ALL, "from": format_ms(lo), "to": format_ms(hi)}
            resp = client.post("/compute/metrics", json=body)
            assert resp.status_code == 200, resp.get_data(as_text=True)
            got, want = resp.get_json()["result"]["temperature"], reference(produced, lo, hi)
            assert got.keys() == want.keys()
            for k, v in want.items():
                assert got[k] == (pytest.approx(v, rel=1e-9) if isinstance(v, float) else v), (
                    n, lo, hi, k)
            asked += 1
    service = app.extensions["iotpipe.service"]
    assert asked == ROUNDS * 6
    assert (service.cache.messages() > 0) == (cache != "0")
    service.close()
