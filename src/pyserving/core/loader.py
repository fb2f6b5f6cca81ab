"""The Loader contract: how the Manager loads and unloads one version of a servable."""

from __future__ import annotations

import abc
from typing import Any


class Loader(abc.ABC):
    """Loads and unloads one version; construction is cheap, `load()` does the work.

    Thread-safety: the Manager never calls load and unload concurrently on one Loader, never calls
    load again after unload, and calls unload only after a successful load.
    """

    @abc.abstractmethod
    def estimate_resources(self) -> int:
        """Upper bound of the RAM this version needs once loaded, in bytes (0 = unknown/free)."""

    @abc.abstractmethod
    def load(self) -> Any:
        """Load the version and return the servable; raise to report a failed load."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Release what `load()` acquired. Called on a Manager thread, never on a request thread."""

    def resources_after_load(self) -> int | None:
        """The refined RAM figure once loaded (None keeps the estimate)."""
        return None
