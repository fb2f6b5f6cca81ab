"""protocols.v2_statistics and protocols.v2_errors: Triton's statistics shape and its words for an
unknown model, shared by the REST and gRPC V2 APIs (issue 16)."""

from __future__ import annotations

import pytest

from pyserving import metrics
from pyserving.core.ids import ServableId, ServableState
from pyserving.core.monitor import VersionStatus
from pyserving.errors import NotFound, ServableNotFound
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.protocols.v2_errors import in_triton_words, unknown_model
from pyserving.protocols.v2_statistics import model_statistics


class Models:
    """Two versions of "stat_m" (2 AVAILABLE, 1 failed) and "stat_idle" with one AVAILABLE."""

    _states = {
        "stat_m": {2: ServableState.AVAILABLE, 1: ServableState.END},
        "stat_idle": {1: ServableState.AVAILABLE},
    }

    def model_status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        states = self._states.get(name)
        if not states or (version is not None and version not in states):
            raise NotFound(f"Could not find any versions of model {name}")
        return [
            VersionStatus(ServableId(name, v), s) for v, s in states.items() if version in (None, v)
        ]

    def available_versions(self, name: str) -> list[int]:
        states = self._states.get(name, {})
        return [v for v, s in states.items() if s is ServableState.AVAILABLE]

    def model_names(self) -> list[str]:
        return list(self._states)


def by_version(document: dict[str, list[dict]]) -> dict[tuple[str, str], dict]:
    return {(s["name"], s["version"]): s for s in document["model_stats"]}


def test_counts_come_from_the_request_metrics_by_version():
    before = by_version(model_statistics(Models(), "stat_m"))[("stat_m", "2")]
    metrics.observe_request("stat_m", 2, "rest", 200, 0.001)
    metrics.observe_request("stat_m", 2, "grpc", 200, 0.001)
    metrics.observe_request("stat_m", 2, "grpc", 400, 0.001)
    metrics.observe_request("stat_m", None, "rest", 404, 0.001)  # no version: in no entry
    entry = by_version(model_statistics(Models(), "stat_m"))[("stat_m", "2")]
    phases = entry["inference_stats"]
    was = before["inference_stats"]
    assert phases["success"]["count"] == was["success"]["count"] + 2
    assert phases["fail"]["count"] == was["fail"]["count"] + 1
    assert entry["inference_count"] == entry["execution_count"] == phases["success"]["count"]
    assert all(phase["ns"] == 0 for phase in phases.values())


def test_which_versions_are_listed():
    models = Models()
    assert list(by_version(model_statistics(models, "stat_m"))) == [("stat_m", "2")]
    # a version named in the request is listed whatever its state
    assert list(by_version(model_statistics(models, "stat_m", 1))) == [("stat_m", "1")]
    assert list(by_version(model_statistics(models))) == [("stat_m", "2"), ("stat_idle", "1")]


def test_the_answer_builds_the_grpc_message_field_for_field():
    document = model_statistics(Models(), "stat_idle")
    message = pb.ModelStatisticsResponse(**document)
    (entry,) = message.model_stats
    assert (entry.name, entry.version) == ("stat_idle", "1")
    assert set(document["model_stats"][0]["inference_stats"]) == {
        f.name for f in pb.InferStatistics.DESCRIPTOR.fields
    }


def test_unknown_model_or_version_is_not_found_in_tritons_words():
    with pytest.raises(NotFound) as info:
        model_statistics(Models(), "nope")
    assert info.value.message == "Request for unknown model: 'nope' is not found"
    with pytest.raises(NotFound) as info:
        model_statistics(Models(), "stat_m", 7)
    assert info.value.message == "Request for unknown model: 'stat_m' version 7 is not found"


def test_in_triton_words_rewords_a_missing_servable_only():
    with pytest.raises(NotFound) as info, in_triton_words():
        raise ServableNotFound("Servable not found for request: Specific(m, 3)", "m", 3)
    assert type(info.value) is NotFound
    assert info.value.message == unknown_model("m", 3)
    assert info.value.__suppress_context__
    with pytest.raises(NotFound) as info, in_triton_words():
        raise NotFound("Unrecognized servable version label: blue")
    assert info.value.message == "Unrecognized servable version label: blue"
