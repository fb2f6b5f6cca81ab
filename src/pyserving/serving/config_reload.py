"""Where a new model config comes from at run time: the config file, re-read by
`ConfigFilePoller`, and ReloadConfig messages (`checked_models`, `merge_reloaded_model`).

ServerCore.apply_config validates and applies what these produce.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pyserving.errors import ServingError
from pyserving.proto import model_server_config_pb2 as config_pb2
from pyserving.serving.config import ConfigError, ModelConfig, ModelServerConfig
from pyserving.serving.config_file import parse_config_text
from pyserving.serving.config_proto import config_from_proto
from pyserving.serving.control_roots import ControlRoots

__all__ = ["ConfigFilePoller", "checked_models", "merge_reloaded_model", "read_config_file"]

logger = logging.getLogger("pyserving")


def read_config_file(path: str) -> str:
    """The text of the model config file at `path`; raises ConfigError when it cannot be read."""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read model config file {path}: {exc}") from exc


class ConfigFilePoller:
    """Re-reads the model config file on its own thread and applies it when its text changed.

    A bad file is logged once and ignored: the config in force stays.
    Thread-safety: `start`, `request_stop` and `join` are called from ServerCore's start and
    stop; `apply` runs on the poll thread.
    Blocking: `join` waits for a reload in progress to finish.
    """

    def __init__(self, path: str, text: str, apply: Callable[[ModelServerConfig], None]) -> None:
        """`text` is the file's text as read at start-up; `apply` applies a changed config
        (raising ServingError to refuse it)."""
        self._path = path
        self._text = text  # as last read and applied; only the poll thread writes it
        self._apply = apply
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, wait_s: float) -> None:
        """Re-read the file every `wait_s` from now on (not after `request_stop`)."""
        if self._stop.is_set():
            return
        self._thread = threading.Thread(
            target=self._poll, args=(wait_s,), name="pyserving-config-poll", daemon=True
        )
        self._thread.start()

    def request_stop(self) -> None:
        """Stop after the current reload, if any; never waits."""
        self._stop.set()

    def join(self) -> None:
        """Wait for the poll thread to exit (`request_stop` first); a no-op on that thread."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _poll(self, wait_s: float) -> None:
        path = self._path
        last_text: str | None = self._text
        while not self._stop.wait(wait_s):
            try:
                text = read_config_file(path)
            except ConfigError as exc:
                if last_text is not None:
                    logger.error("%s; the model config in force stays", exc.message)
                last_text = None
                continue
            if text == last_text:
                continue
            last_text = text
            try:
                self._apply(parse_config_text(text, path))
            except ServingError as exc:
                logger.error(
                    "model config file %s rejected: %s; the model config in force stays",
                    path,
                    exc.message,
                )
            except Exception:  # edge: the poll thread must survive any bug in one reload
                logger.exception("reloading model config file %s failed", path)
            else:
                self._text = text


def checked_models(
    message: config_pb2.ModelServerConfig, config_file: str | None, roots: ControlRoots
) -> list[tuple[ModelConfig, str]]:
    """Each model of a ReloadConfig `message` with the base path to store for it (`roots.check`).

    Relative base paths resolve against `config_file`'s directory (the working directory
    without one). Raises ConfigError for a message that cannot be mapped and PermissionDenied
    for a base path outside `roots`, before anything changes.
    """
    root = Path(config_file).parent.resolve() if config_file else Path.cwd()
    parsed = config_from_proto(message, root)
    return [(model, roots.check(model.name, model.base_path)) for model in parsed.models]


def merge_reloaded_model(model: ModelConfig, real: str, before: ModelConfig | None) -> ModelConfig:
    """`model` as a ReloadConfig message sent it (proto fields only), ready to apply. A model
    re-sent with its name and base path (as sent, or as resolved) keeps its base path and the
    YAML-only keys the message cannot carry; any other model polls the checked real path, so a
    symlink retargeted after the check cannot move it."""
    if before is None or before.base_path not in (model.base_path, real):
        return replace(model, base_path=real)
    traffic = before.traffic
    if not set(traffic) <= set(model.labels):
        logger.warning(
            "model %s: the reload drops label(s) its traffic split uses (%s): traffic split off",
            model.name,
            ", ".join(sorted(set(traffic) - set(model.labels))),
        )
        traffic = {}
    return replace(
        model,
        base_path=before.base_path,
        options=before.options,
        traffic=traffic,
        servable_versions_always_present=before.servable_versions_always_present,
    )
