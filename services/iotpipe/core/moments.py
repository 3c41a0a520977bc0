"""The one formula both the stream and the query service merge partial variances with."""

from __future__ import annotations


def merged_m2(n_a: int, mean_a: float, m2_a: float, n_b: int, mean_b: float, m2_b: float
              ) -> float:
    """The sum of squared deviations of two parts together (Chan et al.): exact for any means,
    no precision lost to large values as with sums of squares. Both counts are > 0."""
    delta = mean_b - mean_a
    return m2_a + m2_b + delta * delta * n_a * n_b / (n_a + n_b)
