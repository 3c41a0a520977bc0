"""The simulator sends like a real fleet: every device once a round, in a new order each round,
each device's seqs one after the other, everything acknowledged by the real broker."""

from __future__ import annotations

import pytest

from iotpipe.sensors.fleet import SensorFleet
from kafka_helpers import create_topics, read_topics, settings_for, unique_prefix

pytestmark = pytest.mark.integration

DEVICES, ROUNDS = 20, 4


def test_each_round_sends_every_device_once_in_a_new_order(bootstrap: str) -> None:
    settings = settings_for(bootstrap, unique_prefix(), devices_per_sensor=str(DEVICES))
    create_topics(settings, partitions=1)  # one partition per sensor: the send order is kept
    fleet = SensorFleet(settings, seed=3, first_seq=100)
    fleet.emit(DEVICES * len(settings.sensors) * ROUNDS)
    assert fleet.close(30) == 0
    readings = read_topics(settings)
    assert len(readings) == DEVICES * len(settings.sensors) * ROUNDS
    for sensor in settings.sensors:
        sent = [r for r in readings if r.sensor == sensor]
        rounds = [sent[k * DEVICES:(k + 1) * DEVICES] for k in range(ROUNDS)]
        for k, round_ in enumerate(rounds):
            assert sorted(r.device for r in round_) == sorted(
                f"{sensor}-{i}" for i in range(DEVICES))
            assert {r.seq for r in round_} == {100 + k}
        orders = {tuple(r.device for r in round_) for round_ in rounds}
        assert len(orders) == ROUNDS, f"{sensor}: a round repeated another's order"
