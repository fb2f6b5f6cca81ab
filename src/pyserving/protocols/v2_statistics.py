"""KServe V2 statistics (Triton's statistics extension), for REST and gRPC alike.

`model_statistics` builds the JSON answer, `{"model_stats": [...]}` with one entry per version in
Triton's shape; REST writes it as is and gRPC builds `ModelStatisticsResponse` from the same dict.
Each AVAILABLE version's numbers come from its statistics (`serving/version_stats.py`), kept
while it is loaded: a version that is not loaded, or has had no request, reads 0.

Blocking: grows with the models and versions served, not with any request: call it off the
event loop.
"""

from __future__ import annotations

from typing import Any, Protocol

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

    def version_statistics(self, name: str, version: int) -> dict[str, Any] | None:
        """`name` at `version`'s statistics in Triton's shape, less name and version; None when
        it has none (not loaded, or no request yet)."""
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
    stats = []
    for model in names:
        available = models.available_versions(model)
        for v in [version] if version is not None else available:
            numbers = models.version_statistics(model, v) if v in available else None
            stats.append(_version_statistics(model, str(v), numbers or _ZERO))
    return {"model_stats": stats}


def _version_statistics(name: str, version: str, numbers: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        **numbers,
        "response_stats": {},
        "memory_usage": [],
    }


#: what a version without statistics reads
_ZERO: dict[str, Any] = {
    "last_inference": 0,
    "inference_count": 0,
    "execution_count": 0,
    "inference_stats": {phase: {"count": 0, "ns": 0} for phase in _PHASES},
    "batch_stats": [],
}
