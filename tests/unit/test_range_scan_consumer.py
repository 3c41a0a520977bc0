"""RangeScan against a stand-in consumer: what it assigns and when, ranges that end in offsets
holding no message (transaction markers), closed windows' ranges whose looked-up end is such an
offset, and the consumer left unassigned whatever happens."""

from __future__ import annotations

import random
import time

import pytest
from confluent_kafka import Message, TopicPartition

from iotpipe.core import wire
from iotpipe.query.errors import ScanTimeout
from iotpipe.query.range_scan import PARTITIONS_AT_ONCE, PartitionRange, RangeScan, ScanJob
from kafka_helpers import reference

TOPIC, SENSOR, T0 = "pressure", "pressure", 1_700_000_000_000


class StandInConsumer:
    """Serves partitions of offset -> message bytes up to their ends (an offset below the end
    holding no message is a transaction marker); records the most partitions assigned."""

    def __init__(self, logs: dict[int, dict[int, bytes]], ends: dict[int, int]) -> None:
        self.logs, self.ends = logs, ends
        self.at: dict[int, int] = {}
        self.most = 0

    def assign(self, tps: list[TopicPartition]) -> None:
        self.at = {tp.partition: tp.offset for tp in tps}
        self.most = max(self.most, len(self.at))

    def incremental_assign(self, tps: list[TopicPartition]) -> None:
        assert not {tp.partition for tp in tps} & set(self.at), "assigned twice"
        self.at |= {tp.partition: tp.offset for tp in tps}
        self.most = max(self.most, len(self.at))

    def incremental_unassign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            del self.at[tp.partition]

    def unassign(self) -> None:
        self.at = {}

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return 0, self.ends[tp.partition]

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self._skip(tp.partition))
                for tp in tps]

    def _skip(self, p: int) -> int:
        """The position once markers are passed: the next message's offset, or the end."""
        at = self.at[p]
        while at < self.ends[p] and at not in self.logs[p]:
            at += 1
        return at

    def consume(self, n: int, timeout: float) -> list[Message]:
        out: list[Message] = []
        for p in sorted(self.at):
            while len(out) < n:
                at = self._skip(p)
                if at not in self.logs[p]:
                    break
                out.append(Message(topic=TOPIC, partition=p, offset=at,
                                   value=self.logs[p][at], timestamp=(1, _stamp(
                                       self.logs[p][at]))))
                self.at[p] = at + 1
        return out


def _stamp(value: bytes) -> int:
    """The message timestamp a producer keeping the wire format gives: the reading's ts."""
    try:
        return wire.decode(value).ts
    except wire.MalformedReading:
        return T0


Logs = dict[int, dict[int, bytes]]


def _logs(rng: random.Random) -> tuple[Logs, dict[int, int], list[wire.Reading]]:
    """5 partitions, each its own devices, some readings sent twice; partition 4 ends in
    three markers (offsets holding no message)."""
    logs: Logs = {}
    sent: list[wire.Reading] = []
    for p in range(5):
        mine = [wire.Reading(f"{SENSOR}-{p}-{d}", SENSOR, s, T0 + s * 1000 + d,
                             rng.randrange(-50, 50)) for s in range(40) for d in range(7)]
        mine += rng.sample(mine, 20)
        mine.sort(key=lambda r: r.ts)
        logs[p] = {k: wire.encode(r) for k, r in enumerate(mine)}
        sent += mine
    ends = {p: len(log) + (3 if p == 4 else 0) for p, log in logs.items()}
    return logs, ends, sent


def _job(ends: dict[int, int], deadline: float, per_partition: bool) -> ScanJob:
    ranges = tuple(PartitionRange(TOPIC, SENSOR, p, 0, end) for p, end in ends.items())
    return ScanJob(ranges, T0, T0 + 10**6, deadline, 30_000, per_partition=per_partition)


@pytest.mark.parametrize("per_partition", [True, False])
def test_every_range_is_read_once_and_let_go(per_partition: bool) -> None:
    logs, ends, sent = _logs(random.Random(3))
    consumer = StandInConsumer(logs, ends)
    consumer.assign([TopicPartition(TOPIC, 9, 0)])  # left over: replaced, not added to
    scan = RangeScan(_job(ends, time.time() + 10, per_partition))
    scan.run(consumer)
    result = scan.results()[SENSOR]
    want = reference(sent, T0, T0 + 10**6)
    assert (result.agg.count, result.agg.total) == (want["count"], want["sum"])
    assert result.agg.duplicates == len(sent) - want["count"] == 100
    assert consumer.at == {}
    assert consumer.most == (PARTITIONS_AT_ONCE if per_partition else 5)
    assert len(result.fingerprints) == (5 if per_partition else 1)
    assert sum(map(len, result.fingerprints)) == 35


def test_a_scan_past_its_deadline_says_how_many_partitions_were_not_read() -> None:
    logs, ends, _ = _logs(random.Random(4))
    consumer = StandInConsumer(logs, ends)
    with pytest.raises(ScanTimeout, match=r"^5 partitions not read"):
        RangeScan(_job(ends, time.time() - 1, True)).run(consumer)
    assert consumer.at == {}


LATENESS = 5_000
STOP = T0 + 9_999 + LATENESS + 1  # where a closed window [T0, T0 + 9,999] is read up to


def _marked_log(after_marker: list[int]) -> dict[int, bytes]:
    """Readings stamped each second from T0 at offsets 0-9, then offset 10 holding no message:
    a transaction marker, stamped when its transaction committed (after STOP, so that the
    lookup of STOP answers 10), then readings stamped `after_marker` (ms past T0)."""
    stamps = [k * 1000 for k in range(10)] + [-1] + after_marker
    return {o: wire.encode(wire.Reading("d", SENSOR, o, T0 + t, o)) for o, t in enumerate(stamps)
            if t >= 0}


@pytest.mark.parametrize("record", [False, True])
def test_a_closed_range_whose_end_holds_no_reading_reads_on_to_the_first_stamped_past(
        record: bool) -> None:
    """Offsets 11-13 are on time and inside the window; 14 is stamped past it and its
    lateness, so 15 and 16 (late) are not read."""
    log = _marked_log([9_500, 9_800, 9_900, STOP - T0, 9_000, 9_100])
    consumer = StandInConsumer({0: log}, {0: 17})
    scan = RangeScan(ScanJob((PartitionRange(TOPIC, SENSOR, 0, 0, 10, STOP),), T0, T0 + 9_999,
                             time.time() + 10, LATENESS, record=record))
    scan.run(consumer)
    if record:
        got = scan.rows()[(TOPIC, 0)]
        assert ([row[0] for row in got.rows], got.end, got.end_stamp) == (
            [*range(10), 11, 12, 13], 14, STOP)
    else:
        agg = scan.results()[SENSOR].agg
        assert (agg.count, agg.total, agg.scanned) == (13, sum(range(10)) + 11 + 12 + 13, 14)
    assert consumer.at == {}


def test_a_closed_range_with_nothing_stamped_past_its_end_reads_to_the_partition_end() -> None:
    log = _marked_log([9_500, 9_800])
    consumer = StandInConsumer({0: log}, {0: 14})  # 13: a marker again
    scan = RangeScan(ScanJob((PartitionRange(TOPIC, SENSOR, 0, 0, 10, STOP),), T0, T0 + 9_999,
                             time.time() + 10, LATENESS, record=True))
    scan.run(consumer)
    got = scan.rows()[(TOPIC, 0)]
    assert ([row[0] for row in got.rows], got.end, got.end_stamp) == (
        [*range(10), 11, 12], 14, None)


def test_a_closed_range_ending_at_a_reading_stops_there() -> None:
    """The common case: the lookup's answer holds the reading stamped past the window."""
    log = {o: wire.encode(wire.Reading("d", SENSOR, o, T0 + t, o))
           for o, t in enumerate([0, 1_000, 2_000, STOP - T0, 3_000])}
    consumer = StandInConsumer({0: log}, {0: 5})
    scan = RangeScan(ScanJob((PartitionRange(TOPIC, SENSOR, 0, 0, 3, STOP),), T0, T0 + 9_999,
                             time.time() + 10, LATENESS))
    scan.run(consumer)
    agg = scan.results()[SENSOR].agg
    assert (agg.count, agg.total, agg.scanned) == (3, 3, 3)


def test_reading_on_stops_at_the_partition_end_first_given() -> None:
    """A partition still being written (readings stamped before the stop keep coming): the
    range read on past its marker ends where the partition ended when first asked."""

    class Growing(StandInConsumer):
        def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
            end = self.ends[0]
            for o in range(end, end + 5):  # written meanwhile
                self.logs[0][o] = wire.encode(wire.Reading("d", SENSOR, o, T0 + 9_000, o))
            self.ends[0] = end + 5
            return 0, end

    consumer = Growing({0: _marked_log([9_500, 9_800])}, {0: 14})
    scan = RangeScan(ScanJob((PartitionRange(TOPIC, SENSOR, 0, 0, 10, STOP),), T0, T0 + 9_999,
                             time.time() + 10, LATENESS, record=True))
    scan.run(consumer)
    got = scan.rows()[(TOPIC, 0)]
    assert ([row[0] for row in got.rows], got.end) == ([*range(10), 11, 12], 14)
