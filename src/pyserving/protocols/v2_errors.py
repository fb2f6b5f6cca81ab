"""KServe V2's error wording, for REST and gRPC alike: an unknown model or version is said as
Triton says it, so that clients and scripts written against Triton read the same text.

The serving core words a missing servable as TF Serving does (`Servable not found for request:
Latest(m)`); the V2 transports re-word it here, the TF Serving APIs keep TF's text.
"""

from __future__ import annotations

from types import TracebackType

from pyserving.errors import NotFound, ServableNotFound

__all__ = ["in_triton_words", "unknown_model"]


def unknown_model(name: str, version: int | None) -> str:
    """Triton's text for a model (or a version of it) that nothing serves."""
    at = f" version {version}" if version is not None else ""
    return f"Request for unknown model: '{name}'{at} is not found"


class _InTritonWords:
    """Re-raises a ServableNotFound raised inside as NotFound in Triton's words (a class, not a
    generator-based context manager: it is entered on every V2 request)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, ServableNotFound):
            # from None: a log shows the one error the client saw, not TF's text chained under it
            raise NotFound(unknown_model(exc.name, exc.version)) from None


_IN_TRITON_WORDS = _InTritonWords()


def in_triton_words() -> _InTritonWords:
    """A context manager that re-raises a ServableNotFound raised inside as NotFound in
    Triton's words."""
    return _IN_TRITON_WORDS
