"""Value models of simulated sensors: the prototype's uniform integers, or a daily cycle."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

# sensor type -> (mean, daily amplitude, noise sd, decimals) of the daily model
DAILY_PROFILES: dict[str, tuple[float, float, float, int]] = {
    "temperature": (18.0, 7.0, 0.4, 2),
    "humidity": (60.0, -18.0, 1.5, 1),
    "pressure": (1013.0, 1.5, 0.3, 1),
}
DEFAULT_PROFILE = (50.0, 20.0, 2.0, 2)
DAY_MS = 86_400_000

ValueModel = Callable[[int, int], int | float]  # (device index, ts ms) -> value


def uniform(rng: random.Random) -> ValueModel:
    """Integers 0..100 inclusive, as the prototype's sensors sent."""
    draw = rng.random
    return lambda _device, _ts: int(draw() * 101)


def daily(sensor: str, rng: random.Random) -> ValueModel:
    """A 24 h sine (peak mid-afternoon UTC) plus Gaussian noise, per device offset."""
    mean, amplitude, noise, decimals = DAILY_PROFILES.get(sensor, DEFAULT_PROFILE)
    gauss = rng.gauss

    def value(device: int, ts: int) -> float:
        phase = 2 * math.pi * ((ts % DAY_MS) / DAY_MS - 0.375)
        offset = ((device * 7919) % 11 - 5) * noise
        return round(mean + offset + amplitude * math.sin(phase) + gauss(0.0, noise), decimals)

    return value


def make_model(name: str, sensor: str, rng: random.Random) -> ValueModel:
    return uniform(rng) if name == "uniform" else daily(sensor, rng)
