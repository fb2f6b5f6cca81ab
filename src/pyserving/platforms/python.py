"""The python platform: a user's `servable.py` (docs/repository.md).

`servable.py` defines one class (or names it in the model config's `class`) with:

    class MyModel:
        def load(self, path: str) -> None: ...          # the version directory
        signatures: dict[str, Signature]                 # an attribute or a property
        def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
        def unload(self) -> None: ...                    # optional

`run` may instead be a generator (each yielded dict is one response of a stream), an `async def`
(awaited on the event loop) or an async generator (streams on the loop): `run_kind` says which
(docs/streaming.md).

A `servable.py` runs as the server's user, so it loads only where the operator said so: the
model config's `allow_python: true` (`--allow-python-servables` sets it for the `--model_base_path`
model); without it the version fails to load, naming that key (docs/operations.md).

Each version's file is imported as its own module (`pyserving_servable_<model>_<version>_<n>`),
so two versions of one model never share module state. The class is instantiated with no
arguments, then `load(path)` runs on a Manager thread. `run` may be called from several threads
at once: a class that is not thread-safe locks inside `run`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import itertools
import os
import re
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from pyserving.errors import FailedPrecondition
from pyserving.platforms.common import FileLoader
from pyserving.platforms.servable import Servable
from pyserving.platforms.signature import Signature

__all__ = ["SERVABLE_FILE", "PythonLoader", "PythonServable"]

SERVABLE_FILE = "servable.py"
_REQUIRED = ("load", "run")  # signatures may be set by load()
_counter = itertools.count(1)  # next() on itertools.count is atomic under the GIL


class PythonLoader(FileLoader):
    """Imports `servable.py` under a unique module name and loads its class.

    Config keys: `allow_python` (must be true, else the load is refused before anything is
    read), `class` (the class to use when the file defines several). Thread-safety: as Loader.
    """

    resource_factor = 1.0

    def load(self) -> Servable:
        if self.config.get("allow_python") is not True:
            raise FailedPrecondition(
                f'model "{self.servable_id.name}" version {self.servable_id.version}:'
                f" {SERVABLE_FILE} runs code as the server's user and this model is not allowed"
                " to: set 'allow_python: true' in its model config, or start the server with"
                " --allow-python-servables for the --model_base_path model"
            )
        return super().load()

    def load_local(self, directory: str, override: Mapping[str, Signature] | None) -> Servable:
        file = os.path.join(directory, SERVABLE_FILE)
        if not os.path.isfile(file):
            raise FailedPrecondition(f"no {SERVABLE_FILE} in {directory}")
        safe_name = re.sub(r"\W", "_", self.servable_id.name)
        module_name = f"pyserving_servable_{safe_name}_{self.servable_id.version}_{next(_counter)}"
        module = _import(module_name, file)
        try:
            cls = _find_class(module, self.config.get("class"))
            instance = cls()
            instance.load(directory)
            return PythonServable(instance, module_name)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise


class PythonServable(Servable):
    """Adapts the user's object to Servable; unload also forgets its module.

    Thread-safety: as the user's `run`.
    """

    platform = "python"

    def __init__(self, instance: Any, module_name: str) -> None:
        self.instance = instance
        self.module_name = module_name
        signatures = instance.signatures
        if not isinstance(signatures, Mapping) or not signatures:
            raise FailedPrecondition(
                f"{SERVABLE_FILE}: signatures must be a non-empty dict of name → Signature"
            )
        for name, signature in signatures.items():
            if not isinstance(signature, Signature):
                raise FailedPrecondition(
                    f'{SERVABLE_FILE}: signature "{name}" is a {type(signature).__name__},'
                    " not a pyserving.platforms.Signature"
                )
        self._signatures = dict(signatures)
        self.feature_names = getattr(instance, "feature_names", None)
        self.run_kind = _run_kind(instance.run)

    @property
    def signatures(self) -> dict[str, Signature]:
        return self._signatures

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The answer; a streaming or async `run` is driven to its end here, off any event loop
        (warmup replays records this way), and its last part is the answer."""
        result = self.instance.run(signature, inputs)
        if self.run_kind != "function":
            result = _run_to_end(self.run_kind, result)
        answer: dict[str, np.ndarray] = result
        return answer

    def start(self, signature: str, inputs: dict[str, np.ndarray]) -> Any:
        """The user's `run` called: a generator, an async generator or a coroutine (by
        `run_kind`); none of its code has run yet."""
        return self.instance.run(signature, inputs)

    def unload(self) -> None:
        try:
            unload = getattr(self.instance, "unload", None)
            if callable(unload):
                unload()
        finally:
            sys.modules.pop(self.module_name, None)

    def memory_bytes(self) -> int | None:
        estimate = getattr(self.instance, "memory_bytes", None)
        return estimate() if callable(estimate) else None


def _run_to_end(kind: str, started: Any) -> Any:
    """The last part of a generator or async generator, or a coroutine's result ({} when a
    generator yields nothing)."""
    if kind == "generator":
        last: Any = {}
        for part in started:
            last = part
        return last
    if kind == "async_generator":

        async def drain() -> Any:
            last: Any = {}
            async for part in started:
                last = part
            return last

        return asyncio.run(drain())
    return asyncio.run(started)


def _run_kind(run: Any) -> str:
    if inspect.isasyncgenfunction(run):
        return "async_generator"
    if inspect.isgeneratorfunction(run):
        return "generator"
    if inspect.iscoroutinefunction(run):
        return "coroutine"
    return "function"


def _import(module_name: str, file: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise FailedPrecondition(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    # registered before running it, so dataclasses and pickling inside it find the module
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _find_class(module: ModuleType, wanted: Any) -> type:
    if wanted is not None:
        cls = getattr(module, str(wanted), None)
        if not inspect.isclass(cls):
            raise FailedPrecondition(f'{SERVABLE_FILE} defines no class "{wanted}"')
        return cls
    candidates = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
        and all(hasattr(cls, attr) for attr in _REQUIRED)
        and not inspect.isabstract(cls)
    ]
    if len(candidates) != 1:
        found = ", ".join(c.__name__ for c in candidates) or "none"
        raise FailedPrecondition(
            f"{SERVABLE_FILE} must define exactly one class with load and run"
            f" (found: {found}); name the one to use in the model config's 'class'"
        )
    return candidates[0]
