"""Window semantics against the real broker: every answer compared to a reference."""

from __future__ import annotations

import random
import time

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from iotpipe.core import wire
from iotpipe.core.wire import Reading
from iotpipe.query import service as service_module
from iotpipe.query.api import RECEIVED
from iotpipe.query.app import create_app
from iotpipe.query.timestamps import format_ms
from kafka_helpers import create_topics, produce, reference, settings_for, unique_prefix
from query_dataset import BASE_MS, Dataset

ALL = ["count", "min", "max", "average", "sum", "stddev"]


def _ask(client: FlaskClient, sensors: list[str], from_ms: int, to_ms: int,
         metrics: list[str] = ALL) -> dict:
    body = {s: metrics for s in sensors} | {"from": format_ms(from_ms), "to": format_ms(to_ms)}
    resp = client.post("/compute/metrics", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    payload = resp.get_json()
    assert payload["errors"] == []
    return payload["result"]


def _same(got: dict, want: dict) -> None:
    """Every metric asked (ALL), each equal to the reference's."""
    assert set(got) == set(ALL) <= set(want), got
    for k in ALL:
        if isinstance(got[k], float) or isinstance(want[k], float):
            assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-9), k
        else:
            assert got[k] == want[k], k


@pytest.mark.parametrize("start,end", [(0, 209_000), (60_000, 120_000), (60_001, 119_999),
                                       (61_000, 61_000), (61_500, 61_999), (-5000, 500),
                                       (100_000, 400_000)])
def test_windows_match_reference(client: FlaskClient, dataset: Dataset, start: int,
                                 end: int) -> None:
    lo, hi = BASE_MS + start, BASE_MS + end
    result = _ask(client, list(dataset.readings), lo, hi)
    for sensor, readings in dataset.readings.items():
        _same(result[sensor], reference(readings, lo, hi))


def test_inclusive_bounds_at_millisecond_precision(client: FlaskClient,
                                                   dataset: Dataset) -> None:
    t = BASE_MS + 61_000  # a reading stamped exactly here, the next one 1 s later
    assert _ask(client, ["temperature"], t, t, ["count"])["temperature"]["count"] == 1
    assert _ask(client, ["temperature"], t + 1, t + 999, ["count"])["temperature"] == {
        "count": 0}
    assert _ask(client, ["temperature"], t - 1000, t - 1, ["count"])["temperature"] == {
        "count": 1}


def test_the_deadline_counts_from_the_request_s_arrival(client: FlaskClient,
                                                       dataset: Dataset) -> None:
    """A request that waited in the front for a free thread as long as the deadline is
    answered 504 at once; one that waited less is answered."""
    deadline = dataset.settings.query_deadline_s
    body = {"temperature": ["count"], "from": format_ms(BASE_MS), "to": format_ms(BASE_MS + 60_000)}
    late = client.post("/compute/metrics", json=body,
                       environ_overrides={RECEIVED: time.time() - deadline - 0.1})
    assert late.status_code == 504, late.get_data(as_text=True)
    assert late.get_json() == {"result": {}, "errors": [
        f"The window could not be read within {deadline:g} seconds"]}
    waited = client.post("/compute/metrics", json=body,
                         environ_overrides={RECEIVED: time.time() - deadline / 2})
    want = reference(dataset.readings["temperature"], BASE_MS, BASE_MS + 60_000)["count"]
    assert waited.status_code == 200 and waited.get_json()["result"] == {
        "temperature": {"count": want}}


def test_empty_window_gives_zero_and_nulls(client: FlaskClient) -> None:
    result = _ask(client, ["humidity"], BASE_MS + 10**9, BASE_MS + 10**9 + 5000,
                  ["count", "min", "max", "average", "mean", "sum", "stddev"])
    assert result == {"humidity": {"count": 0, "min": None, "max": None, "average": None,
                                   "mean": None, "sum": None, "stddev": None}}


def test_duplicates_and_malformed_are_counted_not_used(client: FlaskClient,
                                                       dataset: Dataset) -> None:
    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(f"{name}_total", {"sensor": "pressure"}) or 0.0

    before = {n: sample(n) for n in ("iotpipe_query_duplicate_readings",
                                     "iotpipe_query_malformed_messages")}
    result = _ask(client, ["pressure"], BASE_MS, BASE_MS + 209_000, ["count"])
    assert result["pressure"]["count"] == len(dataset.readings["pressure"])
    assert sample("iotpipe_query_duplicate_readings") - before[
        "iotpipe_query_duplicate_readings"] == 20
    assert sample("iotpipe_query_malformed_messages") - before[
        "iotpipe_query_malformed_messages"] == 7


def test_mean_is_an_alias_of_average(client: FlaskClient) -> None:
    lo, hi = BASE_MS + 5000, BASE_MS + 95_000
    a = _ask(client, ["pressure"], lo, hi, ["average"])["pressure"]["average"]
    m = _ask(client, ["pressure"], lo, hi, ["mean"])["pressure"]["mean"]
    assert a == m


def test_late_readings_within_lateness_count_and_beyond_are_missed(bootstrap: str) -> None:
    """One partition: after `to`, the service reads on until a message stamped later than
    `to` + lateness (30 s); a reading that arrives after that one is not seen."""
    settings = settings_for(bootstrap, unique_prefix(), sensors="temperature")
    create_topics(settings, partitions=1)
    t0 = BASE_MS
    dev = "temperature-0"
    stream = [Reading(dev, "temperature", i, t0 + i * 1000, i) for i in range(11)]  # 0..10 s
    stream.append(Reading(dev, "temperature", 100, t0 + 25_000, 50))  # after `to`, in lateness
    stream.append(Reading(dev, "temperature", 11, t0 + 5500, 7))  # late by 19.5 s: counted
    stream.append(Reading(dev, "temperature", 101, t0 + 41_000, 60))  # past to + lateness
    stream.append(Reading(dev, "temperature", 12, t0 + 6500, 1000))  # too late: missed
    produce(bootstrap, settings.topic("temperature"), stream)
    app = create_app(settings)
    try:
        result = _ask(app.test_client(), ["temperature"], t0, t0 + 10_000, ["count", "max"])
    finally:
        app.extensions["iotpipe.service"].close()
    assert result == {"temperature": {"count": 12, "max": 10}}


@pytest.mark.parametrize("readers", ["0", "2"])
def test_many_partitions_many_devices(bootstrap: str, readers: str) -> None:
    """12 partitions, 40 devices, shuffled within 2 s, repeats (also in other partitions):
    threads and reader processes give the reference answer."""
    settings = settings_for(bootstrap, unique_prefix(), sensors="humidity,pressure",
                            query_readers=readers)
    create_topics(settings, partitions=12)
    rng = random.Random(int(readers) + 11)
    data: dict[str, list[Reading]] = {}
    for sensor in settings.sensors:
        rs = [Reading(f"{sensor}-{d}", sensor, s, BASE_MS + s * 250 + rng.randrange(0, 2000),
                      rng.choice([rng.randrange(-50, 50), round(rng.uniform(-1e3, 1e3), 3)]))
              for s in range(400) for d in range(40)]
        for i in range(0, len(rs), 40 * 8):  # shuffle runs of 2 s: out of order, not late
            run = rs[i:i + 40 * 8]
            rng.shuffle(run)
            rs[i:i + 40 * 8] = run
        data[sensor] = rs
        produce(bootstrap, settings.topic(sensor), rs + rng.sample(rs, 500))
        # the same readings again in one partition, mostly not their own: a device's repeats
        # in two partitions (a producer with another partitioner) still count once
        produce(bootstrap, settings.topic(sensor), rng.sample(rs, 300), partition=5)
    app = create_app(settings)
    try:
        client = app.test_client()
        for lo, hi in [(0, 100_000), (20_000, 40_000), (33_333, 33_333)]:
            result = _ask(client, list(settings.sensors), BASE_MS + lo, BASE_MS + hi)
            for sensor, rs in data.items():
                _same(result[sensor], reference(rs, BASE_MS + lo, BASE_MS + hi))
    finally:
        app.extensions["iotpipe.service"].close()


@pytest.mark.parametrize("per_partition", [True, False])
def test_repeats_read_by_two_scans_count_once(bootstrap: str, per_partition: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A large window is read by two reader processes, cut at equal message counts; readings
    repeated into a partition the other scan (or, de-duplicating per partition, any other
    partition) reads are found and still count once."""
    if per_partition:  # as a window of at least that many messages is read
        monkeypatch.setattr(service_module, "PER_PARTITION_SCAN", 0)
    settings = settings_for(bootstrap, unique_prefix(), sensors="pressure", query_readers="2",
                            query_cache_messages="0")
    create_topics(settings, partitions=4)
    rng = random.Random(5)
    rs = [Reading(f"pressure-{d}", "pressure", s, BASE_MS + s * 100 + d, rng.randrange(-99, 99))
          for s in range(4000) for d in range(4)]
    topic = settings.topic("pressure")
    for p in range(4):  # device p in partition p; every other reading of device p + 2 too
        mine, repeats = (rs[d::4] for d in (p, (p + 2) % 4))
        produce(bootstrap, topic, sorted(mine + repeats[::2], key=lambda r: r.ts), partition=p)
    app = create_app(settings)
    try:
        client = app.test_client()
        for lo, hi in [(0, 400_000), (100_000, 350_000)]:
            result = _ask(client, ["pressure"], BASE_MS + lo, BASE_MS + hi)
            _same(result["pressure"], reference(rs, BASE_MS + lo, BASE_MS + hi))
    finally:
        app.extensions["iotpipe.service"].close()


def test_repeats_in_another_partition_count_once_from_memory(bootstrap: str) -> None:
    """Small windows answered from the window cache: a reading repeated into another partition
    (at most one per range read, the devices' readings otherwise in order, so no partition on
    its own needs de-duplication) still counts once."""
    settings = settings_for(bootstrap, unique_prefix(), sensors="pressure")
    create_topics(settings, partitions=4)
    rs = [Reading(f"pressure-{d}", "pressure", s, BASE_MS + s * 100 + d, (s * 7 + d) % 50)
          for s in range(1000) for d in range(4)]
    topic = settings.topic("pressure")
    for p in range(4):  # device p in partition p; every 600th reading of device p + 2 too
        mine, repeats = (rs[d::4] for d in (p, (p + 2) % 4))
        produce(bootstrap, topic, sorted(mine + repeats[::600], key=lambda r: r.ts),
                partition=p)
    app = create_app(settings)
    try:
        client = app.test_client()
        # cold, asked again (kept), then from memory
        for lo in (0, 55_000, 20_000, 55_000, 55_000, 20_000):
            result = _ask(client, ["pressure"], BASE_MS + lo, BASE_MS + lo + 10_000)
            _same(result["pressure"], reference(rs, BASE_MS + lo, BASE_MS + lo + 10_000))
        assert app.extensions["iotpipe.service"].cache.messages() > 0
    finally:
        app.extensions["iotpipe.service"].close()


@pytest.mark.parametrize("cache", ["0", "250000"])
def test_a_reading_stamped_far_after_its_message_is_malformed(bootstrap: str,
                                                              cache: str) -> None:
    """A device clock far ahead (the year 9999 in a message written at its time) is refused as
    malformed: counted in, it would make every later reading of its partition late."""
    settings = settings_for(bootstrap, unique_prefix(), sensors="pressure",
                            query_cache_messages=cache)
    create_topics(settings, partitions=1)
    rs = [Reading("pressure-0", "pressure", s, BASE_MS + s * 1000, s % 13) for s in range(120)]
    ahead = Reading("pressure-9", "pressure", 0, wire.MAX_TS_MS, 99)
    produce(bootstrap, settings.topic("pressure"),
            [*rs[:40], (wire.encode(ahead), rs[39].ts), *rs[40:]])
    app = create_app(settings)
    try:
        client = app.test_client()

        def malformed() -> float:
            return REGISTRY.get_sample_value("iotpipe_query_malformed_messages_total",
                                             {"sensor": "pressure"}) or 0.0

        for lo, hi in [(0, 119_000), (30_000, 90_000), (30_000, 90_000)]:
            before = malformed()
            result = _ask(client, ["pressure"], BASE_MS + lo, BASE_MS + hi)
            _same(result["pressure"], reference(rs, BASE_MS + lo, BASE_MS + hi))
            assert malformed() - before == 1
    finally:
        app.extensions["iotpipe.service"].close()
