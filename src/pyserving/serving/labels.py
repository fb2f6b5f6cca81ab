"""Version labels and traffic splits of every model, and TF Serving's rules for changing labels.

The label map is immutable and replaced whole when a config is applied, so a request resolving a
label reads one consistent map without a lock: moving a label is atomic (a request sees the old
or the new version, never neither).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pyserving.errors import FailedPrecondition
from pyserving.serving.config import ModelServerConfig
from pyserving.serving.traffic import TrafficSplit

__all__ = ["LabelMap", "check_label_changes"]


@dataclass(frozen=True, slots=True)
class LabelMap:
    """model → label → version, and model → traffic split (only models that have one)."""

    labels: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    traffic: Mapping[str, TrafficSplit] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: ModelServerConfig) -> LabelMap:
        return cls(
            MappingProxyType(
                {m.name: MappingProxyType(dict(m.labels)) for m in config.models if m.labels}
            ),
            MappingProxyType(
                {
                    m.name: TrafficSplit.from_labels(m.traffic, m.labels)
                    for m in config.models
                    if m.traffic
                }
            ),
        )

    def resolve(self, name: str, label: str) -> int | None:
        """The version `label` names for model `name`, or None."""
        labels = self.labels.get(name)
        return labels.get(label) if labels is not None else None


def check_label_changes(
    old: ModelServerConfig,
    new: ModelServerConfig,
    available: Callable[[str], Collection[int]],
    allow_unavailable: bool,
) -> None:
    """Raise FailedPrecondition for a label `new` may not set while `old` is in force.

    TF Serving's rules, with the fix its users asked for: a label of a model that `old` does not
    have (a model being added, like every model of the startup config) may name any version; it
    resolves once that version is AVAILABLE. A label that keeps its version is always allowed.
    A new label must name an AVAILABLE version unless `allow_unavailable`
    (`--allow_version_labels_for_unavailable_models`); a label that moves must always name an
    AVAILABLE version, so no request on it fails during the move.
    """
    for model in new.models:
        before = old.get(model.name)
        if before is None:
            continue
        live = None
        for label, version in model.labels.items():
            previous = before.labels.get(label)
            if previous == version:
                continue
            if previous is None and allow_unavailable:
                continue
            if live is None:
                live = available(model.name)
            if version not in live:
                now = (
                    f'; label "{label}" stays on version {previous}' if previous is not None else ""
                )
                raise FailedPrecondition(
                    f"Request to assign label to version {version} of model {model.name}, which"
                    f" is not currently available for inference{now}"
                )
