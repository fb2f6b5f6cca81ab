"""KServe V2's error wording, for REST and gRPC alike: an unknown model or version is said as
Triton says it, so that clients and scripts written against Triton read the same text.

The serving core words a missing servable as TF Serving does (`Servable not found for request:
Latest(m)`); the V2 transports re-word it here, the TF Serving APIs keep TF's text.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pyserving.errors import NotFound, ServableNotFound

__all__ = ["in_triton_words", "unknown_model"]


def unknown_model(name: str, version: int | None) -> str:
    """Triton's text for a model (or a version of it) that nothing serves."""
    at = f" version {version}" if version is not None else ""
    return f"Request for unknown model: '{name}'{at} is not found"


@contextmanager
def in_triton_words() -> Iterator[None]:
    """Re-raises a ServableNotFound raised inside as NotFound in Triton's words."""
    try:
        yield
    except ServableNotFound as exc:
        # from None: a log shows the one error the client saw, not TF's text chained under it
        raise NotFound(unknown_model(exc.name, exc.version)) from None
