"""protocols.v2_statistics and protocols.v2_errors: Triton's statistics shape and its words for an
unknown model, shared by the REST and gRPC V2 APIs (issue 16)."""

from __future__ import annotations

import pytest

from pyserving.core.ids import ServableId, ServableState
from pyserving.core.monitor import VersionStatus
from pyserving.errors import NotFound, ServableNotFound
from pyserving.proto import grpc_service_pb2 as pb
from pyserving.protocols.v2_errors import in_triton_words, unknown_model
from pyserving.protocols.v2_statistics import model_statistics
from pyserving.serving.version_stats import VersionStats


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

    def __init__(self) -> None:
        self.stats = {("stat_m", 2): VersionStats(), ("stat_m", 1): VersionStats()}

    def model_names(self) -> list[str]:
        return list(self._states)

    def version_statistics(self, name: str, version: int) -> dict | None:
        stats = self.stats.get((name, version))
        return None if stats is None else stats.snapshot()


def by_version(document: dict[str, list[dict]]) -> dict[tuple[str, str], dict]:
    return {(s["name"], s["version"]): s for s in document["model_stats"]}


def test_numbers_come_from_the_versions_statistics():
    models = Models()
    stats = models.stats[("stat_m", 2)]
    stats.answered(True, 500)
    stats.answered(False, 70)
    stats.called(2, 5, 30, 4, 100, 6)  # one batch of two requests, five rows
    stats.batch_called(8, 4, 100, 6)
    entry = by_version(model_statistics(models, "stat_m"))[("stat_m", "2")]
    phases = entry["inference_stats"]
    assert phases["success"] == {"count": 1, "ns": 500}
    assert phases["fail"] == {"count": 1, "ns": 70}
    assert phases["queue"] == {"count": 2, "ns": 30}
    assert phases["compute_input"] == {"count": 2, "ns": 8}
    assert phases["compute_infer"] == {"count": 2, "ns": 200}
    assert phases["compute_output"] == {"count": 2, "ns": 12}
    assert (entry["inference_count"], entry["execution_count"]) == (5, 1)
    assert entry["last_inference"] > 0
    (batch,) = entry["batch_stats"]
    assert batch["batch_size"] == 8 and batch["compute_infer"] == {"count": 1, "ns": 100}
    assert pb.ModelStatisticsResponse(**model_statistics(models, "stat_m")).model_stats


def test_a_version_not_loaded_reads_zero_whatever_it_recorded():
    models = Models()
    models.stats[("stat_m", 1)].answered(True, 500)
    (entry,) = model_statistics(models, "stat_m", 1)["model_stats"]
    assert entry["inference_stats"]["success"] == {"count": 0, "ns": 0}
    assert entry["last_inference"] == 0


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
