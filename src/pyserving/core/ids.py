"""Identifiers of servables and their lifecycle states, as TF Serving's status API shows them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True, order=True)
class ServableId:
    """One version of one servable stream: `(name, version)`, version >= 0."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{{name: {self.name} version: {self.version}}}"


class ServableState(enum.IntEnum):
    """Manager-visible state of one version; numbers are TF Serving's ModelVersionStatus.State.

    States only move forward: START → LOADING → AVAILABLE → UNLOADING → END. A failed load goes
    straight to END with an error; a load waiting to retry stays LOADING, carrying the last
    attempt's error. AVAILABLE is published only after the version can serve; UNLOADING before
    it stops serving. Events reach subscribers in the order the Manager decided the changes, so
    the last event of a version is always its current state.
    """

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True, slots=True)
class ServableRequest:
    """What a client asks for: the latest version, a specific version, or a label's version."""

    name: str
    version: int | None = None
    label: str | None = None

    @classmethod
    def latest(cls, name: str) -> ServableRequest:
        return cls(name)

    @classmethod
    def specific(cls, name: str, version: int) -> ServableRequest:
        return cls(name, version=version)

    @classmethod
    def labelled(cls, name: str, label: str) -> ServableRequest:
        return cls(name, label=label)

    def __str__(self) -> str:
        if self.version is not None:
            return f"Specific({self.name}, {self.version})"
        if self.label is not None:
            return f"Label({self.name}, {self.label})"
        return f"Latest({self.name})"


@dataclass(frozen=True, slots=True)
class ServableStateEvent:
    """One published lifecycle transition; `error` is set on END after a failure, and on
    LOADING while the version waits to retry a failed attempt."""

    id: ServableId
    state: ServableState
    error: str | None = None
    error_code: str = "OK"
    time_s: float = 0.0
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class ServableData(Generic[T]):
    """An id plus either its data (a storage path, a Loader) or the error that replaced it.

    Sources and adapters pass errors downstream as data, so a version that cannot even be
    adapted still shows up in status with its reason. `revision` identifies the version's files
    (e.g. names + sizes + mtimes): a failed version is retried when its revision changes.
    """

    id: ServableId
    data: T | None = None
    error: str | None = None
    revision: str = ""
