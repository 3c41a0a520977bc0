"""Streaming aggregation of readings: constant memory per device, mergeable across partitions."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import chain, compress, count
from operator import mul

from iotpipe.core.moments import merged_m2

METRICS = ("count", "min", "max", "average", "mean", "sum", "stddev")


class SeqSet:
    """Set of non-negative integers: disjoint, sorted, non-adjacent [lo, hi] runs, plus seqs
    added below the last run, held `loose` until they outnumber the runs: inserting each into
    the runs' lists costs their length (quadratic for seqs arriving backwards or at random)."""

    __slots__ = ("his", "loose", "los")

    def __init__(self, lo: int, hi: int) -> None:
        self.los, self.his = [lo], [hi]
        self.loose: set[int] = set()

    def add(self, seq: int) -> bool:
        """Add `seq`; return False if it was already there (a duplicate reading)."""
        los, his, loose = self.los, self.his, self.loose
        if his[-1] + 1 == seq:  # the common case: the next reading in order (loose ones are
            his[-1] = seq  # all below the last run)
            return True
        if seq > his[-1]:  # after a gap: a run of its own
            los.append(seq)
            his.append(seq)
            return True
        i = bisect_right(los, seq) - 1  # the run starting at or before seq
        if (i >= 0 and seq <= his[i]) or seq in loose:
            return False
        loose.add(seq)
        if len(loose) > max(LOOSE_MIN, len(los)):
            self.runs()
        return True

    def runs(self) -> list[tuple[int, int]]:
        """The runs, with the loose seqs merged in."""
        if self.loose:
            merged = sorted([*zip(self.los, self.his, strict=True),
                             *((q, q) for q in self.loose)])
            los, his = [merged[0][0]], [merged[0][1]]
            for lo, hi in merged[1:]:
                if lo == his[-1] + 1:
                    his[-1] = hi
                else:
                    los.append(lo)
                    his.append(hi)
            self.los, self.his, self.loose = los, his, set()
        return list(zip(self.los, self.his, strict=True))


LOOSE_MIN = 64  # loose seqs held before the runs are rebuilt, at the least


class SeenReadings:
    """The (device, seq) pairs counted so far: per device a run [first, last] of consecutive
    seqs in two dicts (extending it costs one lookup and one store), and a SeqSet only once its
    seqs have a gap (filled later, or a reading sent again after others)."""

    __slots__ = ("firsts", "lasts", "sets")

    def __init__(self) -> None:
        self.firsts: dict[str, int] = {}
        self.lasts: dict[str, int] = {}
        self.sets: dict[str, SeqSet] = {}

    def devices(self) -> Iterator[str]:
        return chain(self.lasts, self.sets)

    def add_all(self, devices: Sequence[str], seqs: Sequence[int]) -> list[int]:
        """Note each reading; return the indices of those noted before (repeats)."""
        firsts, lasts, get, sets, repeated = self.firsts, self.lasts, self.lasts.get, self.sets, []
        for i, device, seq in zip(count(), devices, seqs):
            last = get(device)
            if last is not None and last + 1 == seq:  # the next one: the hot path
                lasts[device] = seq
            elif last is None and (not sets or device not in sets):  # new to the window
                firsts[device] = lasts[device] = seq
            elif not self._add(device, seq, last):
                repeated.append(i)
        return repeated

    def _add(self, device: str, seq: int, last: int | None) -> bool:
        if last is None:
            return self.sets[device].add(seq)
        first = self.firsts[device]
        if first <= seq <= last:
            return False
        if seq == first - 1:
            self.firsts[device] = seq
            return True
        del self.firsts[device], self.lasts[device]
        seqs = self.sets[device] = SeqSet(first, last)
        return seqs.add(seq)


def _extreme(pick: Callable[[Iterable[int | float]], int | float],
             values: Sequence[int | float]) -> int | float:
    """min or max of the values; of equal ones an integer (as the rollups give it), so that
    5 and 5.0 give 5 in whatever order they were read."""
    x = pick(values)
    if type(x) is float and x.is_integer():
        return next((v for v in values if type(v) is int and v == x), x)
    return x


def _integers(*xs: int | float) -> bool:
    return all(type(x) is int for x in xs)


def _finite(x: int | float) -> bool:
    return type(x) is int or math.isfinite(x)


def _rounded(x: Fraction) -> float:
    """The double nearest to `x`, or an infinity past a double's range."""
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def _plus(a: int | float, b: int | float) -> int | float:
    """a + b, also when an int past a double's range meets a float (Python then raises):
    summed exactly and rounded."""
    try:
        return a + b
    except OverflowError:
        if not (_finite(a) and _finite(b)):
            return b if _finite(a) else a  # the infinity (or nan) stays
        return _rounded(Fraction(a) + Fraction(b))


@dataclass
class WindowAggregate:
    """Count, sum, min, max and variance of the readings of one sensor in one window."""

    count: int = 0
    total: int | float = 0
    minimum: int | float = math.inf  # the metric is None while count is 0
    maximum: int | float = -math.inf
    shift: int | float = 0  # the first value seen; s1/s2 are sums of (value - shift)
    s1: int | float = 0
    s2: int | float = 0
    scanned: int = 0
    malformed: int = 0
    duplicates: int = 0
    late: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)

    def count_malformed(self, reason: str) -> None:
        self.malformed += 1
        self.malformed_reasons[reason] = self.malformed_reasons.get(reason, 0) + 1

    def add_many(self, values: Sequence[int | float]) -> None:
        """Count the values, with the loops in C (sum, min, max)."""
        if not values:
            return
        if self.count == 0:
            self.shift = values[0]
        self.minimum = _extreme(min, (self.minimum, _extreme(min, values)))
        self.maximum = _extreme(max, (self.maximum, _extreme(max, values)))
        shift, n = self.shift, len(values)
        try:
            total = sum(values)
        except OverflowError:  # ints past a double's range met floats: exactly, then rounded
            total = _rounded(sum(map(Fraction, values), Fraction(0)))
        self.count += n
        self.total = _plus(self.total, total)
        if type(total) is int and _integers(shift, self.s1, self.s2):  # all ints so far:
            # the same sums, exactly
            self.s1 += total - n * shift
            self.s2 += sum(map(mul, values, values)) - 2 * shift * total + n * shift * shift
            return
        # in doubles: an int delta of two large ints would make the sums raise, as above
        float_shift = float(shift)  # (a valid int is within a double's range)
        deltas = [v - float_shift for v in values]
        self.s1 = _plus(self.s1, sum(deltas))
        self.s2 = _plus(self.s2, sum([d * d for d in deltas]))

    def add_readings(self, seen: SeenReadings, on_time: list[bool] | None, lo: int, hi: int,
                     devices: Sequence[str], seqs: Sequence[int], ts: Sequence[int],
                     values: Sequence[int | float]) -> None:
        """Add the readings stamped in [lo, hi] that arrived on time (`on_time`, a flag each
        from `LateFilter.on_time`; None: all did) and are not in `seen` yet, noting them there;
        the others inside the window count as late or duplicates."""
        if on_time is not None:
            self.late += sum(lo <= t <= hi for t in compress(ts, [not x for x in on_time]))
            devices, seqs = list(compress(devices, on_time)), list(compress(seqs, on_time))
            ts, values = list(compress(ts, on_time)), list(compress(values, on_time))
        if ts and (lo > min(ts) or max(ts) > hi):
            inside = [lo <= t <= hi for t in ts]
            devices, seqs = list(compress(devices, inside)), list(compress(seqs, inside))
            values = list(compress(values, inside))
        repeated = seen.add_all(devices, seqs)
        if repeated:
            self.duplicates += len(repeated)
            skip = set(repeated)
            values = [v for i, v in enumerate(values) if i not in skip]
        self.add_many(values)

    def _moments(self) -> tuple[float, float]:
        """Mean and sum of squared deviations (M2); of integer sums exact, rounded once (in
        doubles, the subtraction's error would grow with the count)."""
        n, shift, s1, s2 = self.count, self.shift, self.s1, self.s2
        if isinstance(shift, int) and isinstance(s1, int) and isinstance(s2, int):
            return _rounded(shift + Fraction(s1, n)), _rounded(Fraction(n * s2 - s1 * s1, n))
        return shift + s1 / n, max(s2 - s1 * s1 / n, 0.0)

    def merge(self, other: WindowAggregate) -> None:
        """Fold another partial (another partition) into this one (Chan et al. for M2)."""
        self.scanned += other.scanned
        self.malformed += other.malformed
        self.duplicates += other.duplicates
        self.late += other.late
        for reason, n in other.malformed_reasons.items():
            self.malformed_reasons[reason] = self.malformed_reasons.get(reason, 0) + n
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.total = other.count, other.total
            self.minimum, self.maximum = other.minimum, other.maximum
            self.shift, self.s1, self.s2 = other.shift, other.s1, other.s2
            return
        n_a, n_b = self.count, other.count
        if _integers(self.shift, self.s1, self.s2, other.shift, other.s1, other.s2):
            # integers only: the other's sums re-expressed around this shift, exactly
            d = other.shift - self.shift
            self.s1, self.s2 = (self.s1 + other.s1 + n_b * d,
                                self.s2 + other.s2 + 2 * d * other.s1 + n_b * d * d)
        else:  # re-expressed as shifted sums around the merged mean: s1 = 0, s2 = M2
            mean_a, m2_a = self._moments()
            mean_b, m2_b = other._moments()
            mean = mean_a + (mean_b - mean_a) * n_b / (n_a + n_b)
            m2 = merged_m2(n_a, mean_a, m2_a, n_b, mean_b, m2_b)
            self.shift, self.s1, self.s2 = mean, 0.0, m2
        self.count, self.total = n_a + n_b, _plus(self.total, other.total)
        self.minimum = _extreme(min, (self.minimum, other.minimum))
        self.maximum = _extreme(max, (self.maximum, other.maximum))

    def metric(self, name: str) -> int | float | None:
        """One metric as the API returns it; None (JSON null) for an empty window."""
        if name == "count":
            return self.count
        if self.count == 0:
            return None
        if name == "min":
            return self.minimum
        if name == "max":
            return self.maximum
        if name == "sum":
            return self.total
        if name in ("average", "mean"):
            # as the prototype's statistics.mean: exact for integers, an int when it divides
            if type(self.total) is int and self.total % self.count == 0:
                return self.total // self.count
            return self.total / self.count
        if name == "stddev":
            return math.sqrt(self._moments()[1] / self.count)
        raise KeyError(name)
