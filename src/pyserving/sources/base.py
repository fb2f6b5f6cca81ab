"""Sources, targets and source adapters: how aspired-version lists flow towards the Manager.

As in TF Serving (`core/source.h`, `target.h`, `source_adapter.h`): a Source calls its aspired
versions callback with one stream per call, and each call lists ALL the versions wanted for that
stream, replacing the previous list; an empty list means "unload the whole stream". A
SourceAdapter is a target of one type and a source of another, converting item by item.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from pyserving.core.ids import ServableData

T = TypeVar("T")
In = TypeVar("In")
Out = TypeVar("Out")

#: `callback(stream_name, versions)`: one stream's complete aspired list, replacing its last one.
AspiredVersionsCallback = Callable[[str, list[ServableData[T]]], None]

logger = logging.getLogger(__name__)


class Source(Protocol[T]):
    """Anything that emits aspired-version lists of `ServableData[T]` to one callback."""

    def set_aspired_versions_callback(self, callback: AspiredVersionsCallback[T]) -> None:
        """Set where this source sends its lists; may be called at most once."""
        ...


class Target(Protocol[T]):
    """Anything that takes aspired-version lists (an adapter, the Manager)."""

    def aspire_versions(self, name: str, versions: list[ServableData[T]]) -> None:
        """Take the complete aspired list of stream `name`, replacing its previous one."""
        ...


def connect(source: Source[T], target_callback: AspiredVersionsCallback[T]) -> None:
    """Wire `source` to a target's callback, e.g. `connect(adapter, manager.aspire_versions)`."""
    source.set_aspired_versions_callback(target_callback)


class SourceAdapter(abc.ABC, Generic[In, Out]):
    """A target of `ServableData[In]` and a source of `ServableData[Out]`, converting each item.

    Items that already carry an error pass through as errors; an exception raised by `adapt`
    becomes an error item with its message, so one bad version never stops its stream's list.
    The revision of each item is carried through unchanged.

    Thread-safety: `aspire_versions` may be called from any thread; calls for one stream should
    come from one thread at a time (a Source's polling thread), so their lists stay in order.
    Blocking: `aspire_versions` waits until `set_aspired_versions_callback` was called, as TF
    Serving's SourceAdapter does, so no list is ever dropped during wiring.
    """

    def __init__(self) -> None:
        self._callback: AspiredVersionsCallback[Out] | None = None
        # set once _callback is assigned; _callback is never reassigned afterwards
        self._callback_set = threading.Event()
        self._set_lock = threading.Lock()  # makes the "at most once" check atomic

    @abc.abstractmethod
    def adapt(self, item: ServableData[In]) -> ServableData[Out]:
        """Convert one error-free item; raise to turn it into an error item."""

    def set_aspired_versions_callback(self, callback: AspiredVersionsCallback[Out]) -> None:
        """Set the downstream callback; raises RuntimeError when called a second time."""
        with self._set_lock:
            if self._callback is not None:
                raise RuntimeError(f"{type(self).__name__}: aspired versions callback already set")
            self._callback = callback
            self._callback_set.set()

    def aspire_versions(self, name: str, versions: list[ServableData[In]]) -> None:
        """Convert every item of stream `name` and pass the list on (may wait; see class doc)."""
        adapted = [self._adapt_one(item) for item in versions]
        self._callback_set.wait()
        assert self._callback is not None
        self._callback(name, adapted)

    def _adapt_one(self, item: ServableData[In]) -> ServableData[Out]:
        if item.error is not None:
            return ServableData(item.id, error=item.error, revision=item.revision)
        try:
            out = self.adapt(item)
        except Exception as exc:  # edge: one version's failure becomes data, never a crash
            message = str(exc) or type(exc).__name__
            logger.warning("could not adapt %s: %s", item.id, message)
            return ServableData(item.id, error=message, revision=item.revision)
        if out.revision != item.revision:
            out = dataclasses.replace(out, revision=item.revision)
        return out
