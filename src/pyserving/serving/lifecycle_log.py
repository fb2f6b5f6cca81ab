"""The lifecycle log: one line per version state change, on the `pyserving.lifecycle` logger
(ServerCore subscribes `log_transition` to the Manager's event bus)."""

from __future__ import annotations

import logging

from pyserving.core.ids import ServableState, ServableStateEvent

__all__ = ["log_transition"]

lifecycle_logger = logging.getLogger("pyserving.lifecycle")


def log_transition(event: ServableStateEvent) -> None:
    """Log `event`: errors as warnings, AVAILABLE / END / LOADING as info, the rest as debug."""
    duration = f" duration={event.duration_s:.3f}s" if event.duration_s is not None else ""
    # The same facts as fields, for `--log-format json`.
    fields = {
        "model": event.id.name,
        "version": event.id.version,
        "state": event.state.name,
        "duration_s": event.duration_s,
        "error": event.error,
    }
    if event.error:
        lifecycle_logger.warning(
            "model=%s version=%d state=%s%s error=%s",
            event.id.name,
            event.id.version,
            event.state.name,
            duration,
            event.error,
            extra=fields,
        )
    elif event.state in (ServableState.AVAILABLE, ServableState.END, ServableState.LOADING):
        lifecycle_logger.info(
            "model=%s version=%d state=%s%s",
            event.id.name,
            event.id.version,
            event.state.name,
            duration,
            extra=fields,
        )
    else:
        lifecycle_logger.debug(
            "model=%s version=%d state=%s",
            event.id.name,
            event.id.version,
            event.state.name,
            extra=fields,
        )
