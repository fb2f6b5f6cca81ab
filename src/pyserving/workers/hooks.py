"""What `pyserving serve` asks of a `--workers` worker where it differs from a single process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pyserving.serving.server_core import ServerCore, ServerOptions


class WorkerHooks(Protocol):
    """The few places where a worker serves differently (cli_serve.py calls, worker.py has them).

    Thread-safety: called from `serve`'s main thread and its event loop, once each.
    """

    #: the demo repository the supervisor wrote (`--demo`); None: none
    demo_root: Path | None
    #: a replacement loads its versions before it listens, so no request meets it unready
    load_before_listening: bool

    def build_core(self, options: ServerOptions) -> ServerCore:
        """The worker's ServerCore, fed by the supervisor instead of its own Source."""
        ...

    def model_control(self, core: ServerCore) -> Any:
        """What model-control calls act on: every worker, through the supervisor."""
        ...

    def serving(self, core: ServerCore, inflight_bytes: Callable[[], int]) -> None:
        """Called once the listeners accept: the worker says so to the supervisor."""
        ...
