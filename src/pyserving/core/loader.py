"""The Loader contract: how the Manager loads and unloads one version of a servable."""

from __future__ import annotations

import abc
from typing import Any


class PermanentLoadError(Exception):
    """Raised by a Loader when trying again cannot help (a corrupt or incomplete version).

    The Manager does not retry it; the version is tried again when its files change or it is
    re-aspired. Missing files and the model formats' parse errors count as permanent too (see
    `pyserving.core.harness.is_permanent`).
    """


class Loader(abc.ABC):
    """Loads and unloads one version; construction is cheap, `load()` does the work.

    Thread-safety: the Manager never calls load and unload concurrently on one Loader, never calls
    load again after unload, and calls unload only after a successful load — including when a step
    after the load (`resources_after_load`, the servable's `memory_bytes`) raises: the version
    then ends in error and is unloaded at once.
    """

    @abc.abstractmethod
    def estimate_resources(self) -> int:
        """Upper bound of the RAM this version needs once loaded, in bytes (0 = unknown/free)."""

    @abc.abstractmethod
    def load(self) -> Any:
        """Load the version and return the servable; raise to report a failed load.

        Raise PermanentLoadError when retrying the same files cannot help.
        """

    @abc.abstractmethod
    def unload(self) -> None:
        """Release what `load()` acquired. Called on a Manager thread, never on a request thread."""

    def resources_after_load(self) -> int | None:
        """The refined RAM figure once loaded (None keeps the estimate)."""
        return None
