"""The Servable base class: what every platform (and a user's `servable.py`) provides, and
`call_servable`, the one way the serving threads call it."""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import numpy as np

from pyserving.errors import ModelError, ServingError
from pyserving.platforms.signature import Signature

logger = logging.getLogger("pyserving.servable")

#: the `time.monotonic()` deadline of the request whose `run` is on this thread (None: none);
#: set around unbatched calls, for servables that call out to other servers (the shards router)
current_deadline: ContextVar[float | None] = ContextVar("pyserving_run_deadline", default=None)

#: "function": `run` returns one dict of outputs, on an execution thread; "coroutine": `async
#: def run` returns it, awaited on the event loop; "generator": `run` yields dicts (one response
#: each) on an execution thread; "async_generator": `async def run` yields them on the loop
RUN_KINDS = ("function", "coroutine", "generator", "async_generator")
#: the kinds that stream: more than one response per request (serving/streaming.py)
STREAMING_KINDS = frozenset(("generator", "async_generator"))


class Servable(abc.ABC):
    """A loaded version clients compute with: named signatures and a `run` over numpy arrays.

    Thread-safety: `run` may be called from several threads at once (batch threads, executors);
    a platform whose runtime is not thread-safe serialises inside `run`.
    """

    #: platform name, e.g. "onnx"; the V2 metadata `platform` field is derived from it.
    platform: str = ""
    #: the version's own `batching` setting from its `pyserving.yaml` (parameters, True or
    #: False), None when it has none; FileLoader sets it
    version_batching: Mapping[str, Any] | bool | None = None
    #: the version's V2 model config `parameters` (name → string value): a lookup shard's
    #: `shard_index` and `shard_count`, which the shards router checks; FileLoader sets them
    config_parameters: Mapping[str, str] = MappingProxyType({})
    #: how `run` answers (see RUN_KINDS): "function" returns the outputs (on an execution
    #: thread); the python platform also has "coroutine", "generator" and "async_generator"
    run_kind: str = "function"

    @property
    @abc.abstractmethod
    def signatures(self) -> dict[str, Signature]:
        """Signature name → Signature; one of them is normally "serving_default"."""

    @abc.abstractmethod
    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute the outputs of `signature`; inputs were validated against it beforehand."""

    def unload(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release resources; called once, after the last request on this version finished."""

    def memory_bytes(self) -> int | None:
        """RAM the loaded servable holds, if it knows (refines the Loader's estimate)."""
        return None


def call_servable(
    servable: Servable, signature: str, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """`servable.run`, its exception wrapped once, as ModelError (`model_error`)."""
    try:
        return servable.run(signature, inputs)
    except ServingError:
        raise
    except Exception as exc:
        logger.debug("servable raised on signature %s", signature, exc_info=True)
        raise model_error(exc) from exc


def model_error(exc: Exception) -> ModelError:
    """What a servable raised, as the ModelError its request gets: its message, said once (a
    servable writing into an input, which is read-only, is told so)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ValueError) and "read-only" in message:
        message += " (request inputs are read-only: copy one before changing it)"
    return ModelError(message)
