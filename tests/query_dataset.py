"""The query tests' dataset: three sensors around the prototype's README window, written to the
real broker out of order, with repeats and garbage."""

from __future__ import annotations

import random
from dataclasses import dataclass

from iotpipe.core.settings import Settings
from iotpipe.core.wire import Reading
from iotpipe.query.timestamps import parse_ms
from kafka_helpers import create_topics, produce, settings_for, unique_prefix

BASE_MS = parse_ms("2020-01-13 15:11:00")
SECONDS = 210  # 15:11:00 .. 15:14:29, one reading per second per sensor


@dataclass
class Dataset:
    settings: Settings
    readings: dict[str, list[Reading]]


def _sensor_readings(sensor: str, rng: random.Random) -> list[Reading]:
    values: list[int | float]
    if sensor == "pressure":
        values = [round(1013 + rng.uniform(-3, 3), 2) for _ in range(SECONDS)]
    else:
        values = [rng.randrange(0, 101) for _ in range(SECONDS)]
    return [Reading(f"{sensor}-0", sensor, 1000 + i, BASE_MS + i * 1000, v)
            for i, v in enumerate(values)]


def load_dataset(bootstrap: str) -> Dataset:
    """Three sensors, 1 Hz for 3.5 minutes from 15:11:00 (the prototype's README window is
    15:12:00-15:13:00), written out of order within the lateness, with repeats and garbage."""
    settings = settings_for(bootstrap, unique_prefix(), query_readers="0")
    create_topics(settings)
    rng = random.Random(7)
    readings = {s: _sensor_readings(s, rng) for s in settings.sensors}
    for sensor, rs in readings.items():
        stream: list[Reading | tuple[bytes, int]] = list(rs)
        for i in range(0, len(stream) - 5, 7):  # swap neighbours: out of order by 1-3 s
            j = i + rng.randrange(1, 4)
            stream[i], stream[j] = stream[j], stream[i]
        for r in rng.sample(rs, 20):  # the same reading again, a few seconds later
            stream.insert(min(len(stream), rs.index(r) + rng.randrange(1, 6)), r)
        garbage = [b"not json", b'{"device":"x"}', b"[1,2]", b'{"device":"d","sensor":"' +
                   sensor.encode() + b'","seq":"1","ts":1,"value":1}',
                   b'{"device":"d","sensor":"' + sensor.encode() + b'","seq":1,"ts":'
                   + str(BASE_MS + 61_000).encode() + b',"value":NaN}',
                   b'{"device":"d","sensor":"other","seq":1,"ts":1,"value":1}', b"\xff\xfe"]
        for k, g in enumerate(garbage):
            stream.insert(30 + k * 25, (g, BASE_MS + 30_000 + k * 25_000))
        produce(bootstrap, settings.topic(sensor), stream)
    return Dataset(settings, readings)


