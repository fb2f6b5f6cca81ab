"""Traffic split: requests that name no version or label are spread over labelled versions.

`traffic: {stable: 90, canary: 10}` in a model's config (labels resolved to versions when the
config is applied) sends about 90 % of such requests to the `stable` version and 10 % to the
`canary` one. A version that is not AVAILABLE drops out and the others share its weight; with
none of them AVAILABLE the request goes to the highest AVAILABLE version, as without a split.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Collection, Mapping

__all__ = ["TrafficSplit"]


class TrafficSplit:
    """A weighted choice among versions of one model; immutable once built.

    Thread-safety: `pick` may be called from any thread (it reads only immutable fields and
    the module-level random generator, which is safe to share).
    Blocking: never.
    """

    __slots__ = ("_cumulative", "_total", "_versions", "weights")

    def __init__(self, weights: Mapping[int, int]) -> None:
        """`weights`: version → weight (>= 0, not all 0)."""
        self.weights = {v: w for v, w in sorted(weights.items()) if w > 0}
        if not self.weights:
            raise ValueError("a traffic split needs a version with a positive weight")
        self._versions = tuple(self.weights)
        self._cumulative = tuple(itertools.accumulate(self.weights.values()))
        self._total = self._cumulative[-1]

    @classmethod
    def from_labels(cls, traffic: Mapping[str, int], labels: Mapping[str, int]) -> TrafficSplit:
        """Resolve label weights to version weights; labels naming one version add up."""
        weights: dict[int, int] = {}
        for label, weight in traffic.items():
            version = labels[label]
            weights[version] = weights.get(version, 0) + weight
        return cls(weights)

    def pick(self, available: Collection[int]) -> int | None:
        """A version drawn by weight among those in `available`; None when none of them is."""
        if all(v in available for v in self._versions):
            point = random.random() * self._total
            return self._versions[bisect.bisect_right(self._cumulative, point)]
        live = [(v, w) for v, w in self.weights.items() if v in available]
        if not live:
            return None
        point = random.random() * sum(w for _, w in live)
        for version, weight in live:
            point -= weight
            if point < 0:
                return version
        return live[-1][0]
