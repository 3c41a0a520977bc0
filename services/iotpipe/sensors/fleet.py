"""A fleet of simulated devices writing readings to Kafka in the documented wire format.

One process simulates any number of devices, each sending at the configured rate. Like the
devices of a real fleet, which send independently, they take turns in a new random order every
round, not in a fixed rotation that readers of the topics could come to rely on. Readings are
produced with an idempotent, acks=all producer. While the broker is down the producer keeps
readings buffered and retries them for IOTPIPE_PRODUCER_BUFFER_SECONDS; readings it finally
gives up on are logged and counted as failed (`iotpipe_sensor_readings_failed_total`), never
dropped silently. While that buffer is full the fleet waits for room; once stopping, it waits at
most STOP_ROOM_S, none while the broker is unreachable (room would come only as buffered readings
expire), and gives up on such a reading the same way.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter as Counter_

from iotpipe.core import wire
from iotpipe.core.settings import Settings
from iotpipe.sensors import metrics as prom
from iotpipe.sensors.models import ValueModel, make_model

log = logging.getLogger(__name__)
STOP_ROOM_S = 5.0  # once stopping, the longest wait for room in a full queue
FLUSH_S = 30.0  # at exit, the longest wait for the broker's acknowledgements


@dataclass
class Device:
    sensor: str
    topic: str
    index: int
    name: str
    key: bytes
    model: ValueModel
    seq: int = 0


def producer_config(settings: Settings) -> dict[str, object]:
    return settings.kafka.client_config() | {
        "enable.idempotence": True,
        "acks": "all",
        # not compressed: with the defaults (a device per sensor, a reading a second) a batch
        # holds one reading, no smaller compressed, and each compressed batch costs every
        # reader a decompression of its own (README, "Wire format")
        "compression.type": "none",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 2_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": int(settings.producer_buffer_s * 1000),
        "delivery.report.only.error": True,
        "socket.timeout.ms": max(1000, int(settings.kafka.timeout_s * 1000)),
        "log_level": 3,
        "logger": logging.getLogger("iotpipe.kafka.producer"),
    }


class SensorFleet:
    def __init__(self, settings: Settings, seed: int | None = None,
                 first_seq: int | None = None,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        """`first_seq` defaults to now x rate, + 1: a restarted fleet never reuses a seq,
        because a device sends once a round, and rounds never run ahead of now x rate (the
        first waits for its time: see sensors.__main__.run)."""
        self.settings, self.stopping = settings, stopping
        if first_seq is None:
            first_seq = int(time.time() * settings.sensor_rate_hz) + 1
        self.rng = random.Random(seed)
        self.devices = [self._device(sensor, i, first_seq) for sensor in settings.sensors
                        for i in range(settings.devices_per_sensor)]
        self.produced: Counter[str] = Counter()  # handed to the producer, or given up on
        self.failed: Counter[str] = Counter()  # given up (delivery reports come only for these)
        self._published: Counter[str] = Counter()
        self.broker_up = True
        self._acked_before = 0  # readings acknowledged at the last publish_metrics
        self._late: list[tuple[float, int, str, bytes, bytes, int]] = []
        self._room_until: float | None = None  # once stopping: the end of the wait for room
        self._next = 0
        self.producer = Producer(producer_config(settings) | {
            "on_delivery": self._delivered, "error_cb": self._error})

    def _device(self, sensor: str, index: int, first_seq: int) -> Device:
        name = f"{sensor}-{index}"
        model = make_model(self.settings.value_model, sensor, self.rng)
        return Device(sensor, self.settings.topic(sensor), index, name, name.encode(), model,
                      first_seq)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        """Called for failed deliveries only (delivery.report.only.error): a per-message
        Python callback would halve the simulator's throughput."""
        if err is not None:
            self.failed[msg.topic() or "?"] += 1
            log.error("reading not delivered, given up (the broker may still have written it: "
                      "its acknowledgement did not come): topic=%s key=%s value=%s error=%s",
                      msg.topic(), msg.key(), msg.value(), err.str())

    def acknowledged(self) -> dict[str, int]:
        """Readings the broker acknowledged so far, per topic (exact once flushed)."""
        in_flight = len(self.producer)
        acked = {t: n - self.failed[t] for t, n in self.produced.items()}
        if in_flight:  # not attributable per topic: count none of the in-flight ones
            return {t: max(0, n - in_flight) for t, n in acked.items()}
        return acked

    def _error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if self.broker_up:
                log.warning("broker unreachable (%s); buffering readings for up to %gs",
                            err.str(), self.settings.producer_buffer_s)
            self.broker_up = False
        else:
            log.warning("kafka client error: %s", err.str())

    def emit(self, count: int, now_ms: int | None = None) -> None:
        """Produce the next `count` readings: each device once per round, every round in a new
        random order."""
        s = self.settings
        devices, n_dev = self.devices, len(self.devices)
        rnd, encode, Reading = self.rng.random, wire.encode, wire.Reading
        dup, late = s.duplicate_rate, s.late_rate
        ts = now_ms if now_ms is not None else int(time.time() * 1000)
        for _ in range(count):
            if self._next == 0:
                self.rng.shuffle(devices)
            d = devices[self._next]
            self._next = (self._next + 1) % n_dev
            raw = encode(Reading(d.name, d.sensor, d.seq, ts, d.model(d.index, ts)))
            d.seq += 1
            if late and rnd() < late:
                release = time.monotonic() + s.late_delay_s
                heapq.heappush(self._late, (release, d.seq, d.topic, d.key, raw, ts))
                prom.LATE_INJECTED.labels(d.sensor).inc()
                continue
            copies = 2 if dup and rnd() < dup else 1
            if copies == 2:
                prom.DUPLICATES_INJECTED.labels(d.sensor).inc()
            for _ in range(copies):
                self._produce(d.topic, d.key, raw, ts)
        self.producer.poll(0)
        self.release_late(force=False)

    def release_late(self, force: bool) -> None:
        """Send held-back readings whose delay is over (all of them when `force`)."""
        now = time.monotonic()
        while self._late and (force or self._late[0][0] <= now):
            _, _, topic, key, raw, ts = self._late[0]
            self._produce(topic, key, raw, ts)
            heapq.heappop(self._late)

    def _produce(self, topic: str, key: bytes, raw: bytes, ts: int) -> None:
        while True:
            try:
                self.producer.produce(topic, raw, key, timestamp=ts)
                break
            except BufferError:  # local queue full (long outage): wait for room
                if self.stopping():
                    if self._room_until is None:  # the stop's first wait: is the broker back?
                        self.publish_metrics()
                        self._room_until = time.monotonic() + STOP_ROOM_S
                    if not self.broker_up or time.monotonic() >= self._room_until:
                        self.failed[topic] += 1
                        log.error("reading not sent, given up (stopping with the producer's "
                                  "queue full): topic=%s key=%s value=%s", topic, key, raw)
                        break
                self.producer.poll(0.1)
        self.produced[topic] += 1

    def publish_metrics(self) -> None:
        """Bring the Prometheus counters up to date (cheap, once a second)."""
        in_flight = len(self.producer)
        # a reading acknowledged since the last look: a busy fleet's queue is never empty
        delivered = self.produced.total() - self.failed.total() - in_flight
        if not self.broker_up and (in_flight == 0 or delivered > self._acked_before):
            self.broker_up = True
            log.warning("broker reachable again; buffered readings being delivered")
        self._acked_before = delivered
        acked = self.acknowledged()
        for sensor in self.settings.sensors:
            topic = self.settings.topic(sensor)
            self._bump(prom.READINGS_SENT, sensor, "sent", acked.get(topic, 0))
            self._bump(prom.READINGS_FAILED, sensor, "failed", self.failed[topic])
        prom.QUEUED.set(in_flight)
        prom.BROKER_UP.set(1 if self.broker_up else 0)

    def _bump(self, counter: Counter_, sensor: str, kind: str, value: int) -> None:
        """Counters only go up: add what is new since the last publish."""
        key = f"{kind}:{sensor}"
        if value > self._published[key]:
            counter.labels(sensor).inc(value - self._published[key])
            self._published[key] = value

    def close(self, timeout_s: float = FLUSH_S) -> int:
        """Send held-back readings, wait for acknowledgements; return the readings that never
        got one (still queued now, or given up on earlier)."""
        self.release_late(force=True)
        left = self.producer.flush(timeout_s)
        self.publish_metrics()
        given_up = sum(self.failed.values())
        if left or given_up:
            log.error("%d readings were given up on and %d are still unacknowledged at exit",
                      given_up, left)
        return left + given_up
