"""The rollup topic, followed in memory: which part of a window the stream has already summed.

Each worker reads the compacted rollup topic from its beginning, then follows it, into columns
per sensor (`_Columns`). `plan` cuts a window into the whole final buckets inside it, answered
from these columns with a few sums in C, and the windows left to read from the readings: its
partial buckets at both edges, what is newer than the final mark, and any bucket whose record
could not be read. Every reading falls in exactly one part, so none is counted twice or missed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from array import array
from collections import defaultdict
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from iotpipe.core import wire
from iotpipe.core.settings import Settings
from iotpipe.query import metrics as prom
from iotpipe.query.aggregate import WindowAggregate
from iotpipe.query.errors import is_missing
from iotpipe.query.retention import retention_note
from iotpipe.query.timestamps import format_ms

log = logging.getLogger(__name__)
RETRY_S = 2.0
CHECK_S = 5.0  # how often the followed topic is looked up
EXACT = 2**53  # doubles hold every integer up to this: integer sums stay exact below it
# a final mark (or bucket) stamped further than this past the worker's clock is not believed
# (a device clock far ahead): it would call every bucket until then final
AHEAD_MS = 86_400_000
CHUNK = 4096  # buckets per chunk of a sensor's columns


@dataclass
class RollupPlan:
    """Which source answers which part of a window: `rolled` per sensor from the rollups (the
    buckets [first, last) by number), `raw` windows [lo, hi] from the readings."""

    raw: list[tuple[int, int]]
    rolled: dict[str, WindowAggregate] = field(default_factory=dict)
    first: int = 0
    last: int = 0
    notes: list[str] = field(default_factory=list)  # for the answer's `errors`

    @property
    def buckets(self) -> int:
        return self.last - self.first


class _Chunk:
    """CHUNK buckets of one sensor, by their number within the chunk; an empty bucket has
    count 0. `m2` is each bucket's sum of squared deviations from its own mean."""

    def __init__(self) -> None:
        zeros = bytes(8 * CHUNK)
        self.count = array("q", zeros)
        self.total, self.m2 = array("d", zeros), array("d", zeros)
        self.lo, self.hi = array("d", [math.inf]) * CHUNK, array("d", [-math.inf]) * CHUNK
        self.inexact = array("b", bytes(CHUNK))  # 1: a value was not a JSON integer
        self.lo_int = array("b", bytes(CHUNK))  # 1: that extreme was an integer
        self.hi_int = array("b", bytes(CHUNK))

    def put(self, i: int, b: wire.Bucket) -> None:
        self.count[i], self.total[i], self.m2[i] = b.count, b.total, b.m2
        self.lo[i], self.hi[i], self.inexact[i] = b.minimum, b.maximum, not b.ints
        self.lo_int[i], self.hi_int[i] = b.ints or b.min_int, b.ints or b.max_int

    def aggregate(self, i: int, j: int) -> WindowAggregate:
        """The buckets [i, j) of the chunk merged, as the raw path would have counted them."""
        n = sum(self.count[i:j])
        if n == 0:
            return WindowAggregate()
        total: int | float
        lo: int | float = min(self.lo[i:j])
        hi: int | float = max(self.hi[i:j])
        import numpy as np  # (imported by the worker's warm-up, not by reader processes)

        if any(self.inexact[i:j]):
            total = sum(self.total[i:j])
            # an extreme that was an integer in any bucket holding it stays one, as the
            # readings give it (5 and 5.0: 5)
            lo = int(lo) if self._int_in(self.lo, self.lo_int, lo, i, j) else lo
            hi = int(hi) if self._int_in(self.hi, self.hi_int, hi, i, j) else hi
        else:  # every bucket's integer sum is exact (see `add`); fsum rounds theirs once,
            # so below EXACT it is the sum itself
            rounded = math.fsum(self.total[i:j])
            total = int(rounded) if abs(rounded) < EXACT else sum(map(int, self.total[i:j]))
            lo, hi = int(lo), int(hi)
        # the spread within the buckets, plus theirs around this run's own mean (Chan et
        # al.): every term >= 0, so nothing cancels however far the level moved
        mean = total / n
        counts, sums = np.frombuffer(self.count[i:j], np.int64), np.frombuffer(self.total[i:j])
        held = counts > 0
        apart = sums[held] / counts[held] - mean
        # (an element-wise sum: numpy's dot calls BLAS, whose threads spin on busy cores)
        m2 = math.fsum(self.m2[i:j]) + float((counts[held] * (apart * apart)).sum())
        return WindowAggregate(count=n, total=total, minimum=lo, maximum=hi, shift=mean,
                               s1=0.0, s2=m2)

    @staticmethod
    def _int_in(extremes: array[float], is_int: array[int], x: float, i: int, j: int) -> bool:
        """Whether a bucket of [i, j) whose extreme is `x` had it as an integer."""
        import numpy as np

        held = np.frombuffer(extremes, np.float64)[i:j] == x
        return bool(np.frombuffer(is_int, np.int8)[i:j][held].any())


class _Columns:
    """One sensor's buckets in chunks of CHUNK by bucket number: memory follows the buckets
    held, not the time between them (a device clock decades behind costs one chunk)."""

    def __init__(self, first: int) -> None:
        self.chunks: defaultdict[int, _Chunk] = defaultdict(_Chunk)
        self.first = first  # the earliest bucket held

    def put(self, n: int, b: wire.Bucket) -> None:
        k, i = divmod(n, CHUNK)
        self.chunks[k].put(i, b)
        self.first = min(self.first, n)

    def aggregate(self, first: int, last: int) -> WindowAggregate:
        """The buckets [first, last) merged."""
        agg = WindowAggregate()
        lo, hi = first // CHUNK, (last - 1) // CHUNK
        # the chunks in the window or the chunks held, whichever are fewer
        keys = range(lo, hi + 1) if hi - lo < len(self.chunks) else sorted(self.chunks)
        for k in keys:
            if lo <= k <= hi and (chunk := self.chunks.get(k)) is not None:
                start = k * CHUNK
                agg.merge(chunk.aggregate(max(first - start, 0), min(last - start, CHUNK)))
        return agg


def _rounded_integers(b: wire.Bucket) -> bool:
    """Whether a double of the record may have rounded an integer answer (its sum, when every
    value is one, or an extreme that was one): then the bucket is read from the readings."""
    if b.ints:
        return b.count * max(abs(b.minimum), abs(b.maximum)) >= EXACT
    return (b.min_int and abs(b.minimum) >= EXACT) or (b.max_int and abs(b.maximum) >= EXACT)


class RollupIndex:
    """A worker's copy of the rollup topic, kept by one thread that follows it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket_ms = settings.rollup_s * 1000
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # set once the topic was read up to its end when first found, or found missing: a
        # worker waits for it before taking requests (see gunicorn_conf)
        self.loaded = threading.Event()
        self._clear()
        self._thread = threading.Thread(target=self._follow, name="rollups", daemon=True)

    def start(self) -> RollupIndex:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _clear(self) -> None:
        with self._lock:
            self.sensors: dict[str, _Columns] = {}
            self.progress: wire.Progress | None = None
            # (sensor, bucket number) whose latest record could not be read, or holds integers
            # a double cannot sum exactly: read from the readings
            self.unreadable: set[tuple[str, int]] = set()

    def plan(self, sensors: list[str], lo: int, hi: int, expired: int | None = None
             ) -> RollupPlan:
        """Cut the window [lo, hi] (epoch ms, inclusive) into rolled buckets and raw windows.
        An edge of the window older than `expired` (readings before it may be deleted) is
        answered with its whole bucket from the rollups, and the plan says so."""
        r = self.bucket_ms
        with self._lock:
            p = self.progress
            if p is None:
                return RollupPlan([(lo, hi)])
            # the earliest bucket held: older records may have passed the topic's retention
            held = min((c.first for c in self.sensors.values()), default=0)
            begin = max(-(-p.since // r), held)
            first = max(-(-lo // r), begin)
            last = min((hi + 1) // r, p.final // r)
            notes = []
            if expired is not None and first > begin and lo < first * r <= expired:
                first -= 1
                notes.append(retention_note(
                    sensors, expired, f"the window was answered from {format_ms(first * r)}, "
                    f"the start of the rollup bucket holding its start ({r // 1000}-second "
                    "precision)"))
            if expired is not None and last * r <= hi and last + 1 <= p.final // r \
                    and (last + 1) * r <= expired:
                last += 1
                notes.append(retention_note(
                    sensors, expired, "the window was answered up to "
                    f"{format_ms(last * r - 1)}, the end of the rollup bucket holding its end "
                    f"({r // 1000}-second precision)"))
            if first >= last:
                return RollupPlan([(lo, hi)])
            holes = sorted({n for sensor, n in self.unreadable
                            if first <= n < last and sensor in sensors})
            runs = list(zip([first] + [n + 1 for n in holes], [*holes, last], strict=True))
            rolled = {sensor: WindowAggregate() for sensor in sensors}
            for sensor, agg in rolled.items():
                if (columns := self.sensors.get(sensor)) is not None:
                    for a, b in runs:
                        agg.merge(columns.aggregate(a, b))
        raw: list[tuple[int, int]] = []  # one read per run of adjacent parts
        for a, b in [(lo, first * r - 1), *((n * r, n * r + r - 1) for n in holes),
                     (last * r, hi)]:
            if a > b:  # an empty edge
                continue
            if raw and raw[-1][1] + 1 == a:
                raw[-1] = (raw[-1][0], b)
            else:
                raw.append((a, b))
        return RollupPlan(raw, rolled, first, last, notes)

    def _follow(self) -> None:
        """Read the topic from its beginning and follow it; if it is lost (deleted, truncated,
        or its records refused), forget everything (windows are read raw) and start again. A
        broker away for a while loses nothing: what is held stays true."""
        topic, lost = self.settings.rollup_topic, False
        while not self._stop.is_set():
            consumer: Consumer | None = None
            try:
                # never joined (assigned by hand); named like the query user's groups (secure
                # mode). Made anew after a loss: a rotated password or certificate is read
                consumer = Consumer(self.settings.kafka.client_config() | {
                    "group.id": "iotpipe-query-rollups", "enable.auto.commit": False,
                    "auto.offset.reset": "error", "log_level": 0})
                consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
                low, end = consumer.get_watermark_offsets(
                    TopicPartition(topic, 0), timeout=self.settings.kafka.timeout_s)
                checked = 0.0
                while not self._stop.is_set():
                    self._apply(consumer.consume(1000, 0.5))
                    if not self.loaded.is_set() and (end <= low or consumer.position(
                            [TopicPartition(topic, 0)])[0].offset >= end):
                        self.loaded.set()  # (an empty topic: nothing to read)
                    if time.monotonic() - checked > CHECK_S:
                        self._check(consumer, topic)
                        checked = time.monotonic()
                    if lost:
                        log.info("rollup topic %s read again", topic)
                        lost = False
                    self._report_lag()
            except Exception as e:  # also no client (an unreadable password file, CA file)
                if is_missing(e):  # no topic to read (yet): nothing to wait for
                    self.loaded.set()
                if not lost:
                    log.warning("rollup topic %s lost (%s): windows are read from the "
                                "readings until it is back", topic, e)
                lost = True
                self._clear()
                self._report_lag()
                self._stop.wait(RETRY_S)
            finally:
                if consumer is not None:
                    consumer.close()

    def _report_lag(self) -> None:
        """How far behind now the final buckets end; +Inf while none is (the topic lost, or no
        progress read yet): windows are then read from the readings, as the alert says."""
        p = self.progress
        prom.ROLLUP_LAG.set(math.inf if p is None else max(0.0, time.time() - p.final / 1000))

    def _check(self, consumer: Consumer, topic: str) -> None:
        """A deleted topic sends a follower no error: ask for it. One recreated since (its
        offsets start again) counts as lost too."""
        try:
            meta = consumer.list_topics(topic, timeout=self.settings.kafka.timeout_s).topics[topic]
        except KafkaException as e:
            if is_missing(e):
                raise
            return  # the broker away for a while: what is held stays true; asked again later
        if meta.error is not None:
            raise KafkaException(meta.error)
        position = consumer.position([TopicPartition(topic, 0)])[0].offset
        try:
            high = consumer.get_watermark_offsets(TopicPartition(topic, 0),
                                                  timeout=self.settings.kafka.timeout_s)[1]
        except KafkaException:  # not known yet to this client: the next check asks again
            return
        if position > high:
            raise KafkaException(KafkaError(KafkaError.OFFSET_OUT_OF_RANGE,
                                            f"the topic ends at {high}, before {position}"))

    def _apply(self, messages: list) -> None:
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() in (KafkaError._PARTITION_EOF, KafkaError._TRANSPORT,
                                  KafkaError._ALL_BROKERS_DOWN):
                    continue  # the broker away for a while: what is held stays true
                raise KafkaException(err)
            try:
                self.add(wire.decode_rollup(m.value()))
            except (ValueError, OverflowError) as e:  # MalformedRollup, or past a column's type
                self._unreadable(m.key(), str(e))

    def add(self, record: wire.Bucket | wire.Progress) -> None:
        """Hold one record read from the topic (a bucket's latest value replaces the last).
        Raises ValueError for a record stamped in the future (see AHEAD_MS)."""
        stamp = record.final if isinstance(record, wire.Progress) else record.start
        if stamp > time.time() * 1000 + AHEAD_MS:
            raise ValueError(f"stamped {stamp} ms, more than a day past this worker's clock")
        with self._lock:
            if isinstance(record, wire.Progress):
                self.progress = record if record.bucket_ms == self.bucket_ms else None
                if self.progress is None:
                    log.error("the stream rolls up %d ms buckets, IOTPIPE_ROLLUP_SECONDS here "
                              "says %d ms: rollups unused", record.bucket_ms, self.bucket_ms)
                return
            n = record.start // self.bucket_ms
            if _rounded_integers(record):
                self.unreadable.add((record.sensor, n))
                return
            columns = self.sensors.get(record.sensor) or _Columns(n)
            columns.put(n, record)  # (raises for a count past its integers: nothing held)
            self.sensors[record.sensor] = columns
            self.unreadable.discard((record.sensor, n))

    def _unreadable(self, key: bytes | None, why: str) -> None:
        prom.ROLLUP_MALFORMED.inc()
        log.warning("unreadable rollup record %r: %s", key, why)
        try:
            sensor, start = (key or b"").decode().rsplit("|", 1)
            n = int(start) // self.bucket_ms
        except ValueError:  # (also not UTF-8, or no "|")
            return  # no bucket named: nothing to read raw instead
        with self._lock:
            self.unreadable.add((sensor, n))
