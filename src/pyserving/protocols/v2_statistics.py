"""KServe V2 statistics (Triton's statistics extension), for REST and gRPC alike.

`model_statistics` builds the JSON answer, `{"model_stats": [...]}` with one entry per version in
Triton's shape; REST writes it as is and gRPC builds `ModelStatisticsResponse` from the same dict.
Counts come from the request metrics (`pyserving_requests_total`, both APIs and transports): a
request is one inference here, answered with 200 (success) or not (fail). Durations are not
tracked per version, so every `ns` is 0.

Blocking: walks the metrics registry (grows with the models and versions served, not with any
request): call it off the event loop.
"""

from __future__ import annotations

from typing import Any, Protocol

from pyserving import metrics
from pyserving.core.monitor import VersionStatus
from pyserving.errors import NotFound
from pyserving.protocols.v2_errors import unknown_model

__all__ = ["Models", "model_statistics"]

#: Triton's per-phase durations, in the order its `InferStatistics` lists them
_PHASES = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


class Models(Protocol):
    """What the statistics need to know of the models (`InferenceService` has it)."""

    def model_status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """Every known version of `name` (or only `version`); raises NotFound when none is."""
        ...

    def available_versions(self, name: str) -> list[int]:
        """AVAILABLE versions of `name`, highest first."""
        ...

    def model_names(self) -> list[str]:
        """Every model known, loaded or not."""
        ...


def model_statistics(models: Models, name: str = "", version: int | None = None) -> dict[str, Any]:
    """The statistics of every model (`name` empty), of `name`'s AVAILABLE versions, or of
    `name` at `version` (a version in any state).

    Raises NotFound in Triton's words for an unknown model or version.
    """
    if name:
        try:
            models.model_status(name, version)
        except NotFound:
            raise NotFound(unknown_model(name, version)) from None
        names = [name]
    else:
        names = models.model_names()
    counts = _request_counts()
    stats = []
    for model in names:
        versions = [version] if version is not None else models.available_versions(model)
        for v in versions:
            success, fail = counts.get((model, str(v)), (0, 0))
            stats.append(_version_statistics(model, str(v), success, fail))
    return {"model_stats": stats}


def _version_statistics(name: str, version: str, success: int, fail: int) -> dict[str, Any]:
    phases: dict[str, dict[str, int]] = {phase: {"count": 0, "ns": 0} for phase in _PHASES}
    phases["success"]["count"] = success
    phases["fail"]["count"] = fail
    return {
        "name": name,
        "version": version,
        "last_inference": 0,
        "inference_count": success,
        "execution_count": success,
        "inference_stats": phases,
        "response_stats": {},
        "batch_stats": [],
        "memory_usage": [],
    }


def _request_counts() -> dict[tuple[str, str], tuple[int, int]]:
    """(model, version) → (successful, failed) requests over both APIs, from the metrics."""
    counts: dict[tuple[str, str], list[int]] = {}
    for family in metrics.REQUESTS.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            entry = counts.setdefault((labels["model"], labels["version"]), [0, 0])
            entry[0 if labels["code"] == "200" else 1] += int(sample.value)
    return {key: (ok, failed) for key, (ok, failed) in counts.items()}
