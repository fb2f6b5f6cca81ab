"""Platform registry: platform name → Loader factory, and detection of a version's platform.

Built-in platforms are imported lazily, on first use, so a missing framework only fails the
versions that need it. Modules named after the framework they wrap end in `_platform`
(`torch_platform.py`) so they never shadow it. Third-party platforms register through the
`pyserving.platforms` entry point group (name = platform, value = a `LoaderFactory`), also
discovered on first use.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import posixpath
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import fsspec

from pyserving.core.ids import ServableId
from pyserving.core.loader import Loader
from pyserving.errors import FailedPrecondition, NotFound

#: `factory(servable_id, version_path, model_config) -> Loader`; must be cheap (no model load).
LoaderFactory = Callable[[ServableId, str, Mapping[str, Any]], Loader]

ENTRY_POINT_GROUP = "pyserving.platforms"

#: Files that identify a platform, in priority order (docs/repository.md). `servable.py` is first:
#: a user's own servable may wrap any of the other files.
PLATFORM_FILES: tuple[tuple[str, str], ...] = (
    ("servable.py", "python"),
    ("saved_model.pb", "tensorflow"),
    ("model.onnx", "onnx"),
    ("model.pt2", "torch"),
    ("model.pt", "torch"),
    ("model.skops", "sklearn"),
    ("model.joblib", "sklearn"),
    ("model.pkl", "sklearn"),
    ("model.ubj", "xgboost"),
    ("model.xgb", "xgboost"),
    ("model.lgb", "lightgbm"),
    ("table.tsv", "lookup"),
    ("table.csv", "lookup"),
    ("table.npz", "lookup"),
    ("table.parquet", "lookup"),
    ("delta.yaml", "lookup"),  # a lookup delta that only removes keys has no table file
)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class _BuiltinPlatform:
    display_name: str  # the V2 metadata `platform` string
    extra: str | None  # the pip extra that installs its framework; None = always installed
    factory: str  # "module:attribute" of its LoaderFactory


_BUILTIN: dict[str, _BuiltinPlatform] = {
    "onnx": _BuiltinPlatform("onnxruntime_onnx", None, "pyserving.platforms.onnx:OnnxLoader"),
    "tensorflow": _BuiltinPlatform(
        "tensorflow_savedmodel",
        "tensorflow",
        "pyserving.platforms.tensorflow_platform:TensorFlowLoader",
    ),
    "torch": _BuiltinPlatform(
        "pytorch_torchscript", "torch", "pyserving.platforms.torch_platform:TorchLoader"
    ),
    "sklearn": _BuiltinPlatform(
        "sklearn", "sklearn", "pyserving.platforms.sklearn_platform:SklearnLoader"
    ),
    "xgboost": _BuiltinPlatform(
        "xgboost", "xgboost", "pyserving.platforms.xgboost_platform:XGBoostLoader"
    ),
    "lightgbm": _BuiltinPlatform(
        "lightgbm", "lightgbm", "pyserving.platforms.lightgbm_platform:LightGBMLoader"
    ),
    "lookup": _BuiltinPlatform("lookup", None, "pyserving.platforms.lookup:LookupLoader"),
    "python": _BuiltinPlatform("python", None, "pyserving.platforms.python:PythonLoader"),
    "shards": _BuiltinPlatform("shards", None, "pyserving.platforms.shards:ShardsLoader"),
}


class PlatformRegistry:
    """Maps platform names to Loader factories: registered, then entry points, then built-ins.

    Thread-safety: every method may be called from any thread.
    Blocking: the first lookup reads the installed entry points; a built-in platform's module is
    imported on its first `make_loader`.
    """

    def __init__(self, entry_point_group: str = ENTRY_POINT_GROUP) -> None:
        self._group = entry_point_group
        # guards _factories, _display_names, _entry_points
        self._lock = threading.Lock()
        self._factories: dict[str, LoaderFactory] = {}
        self._display_names: dict[str, str] = {}
        self._entry_points: dict[str, importlib.metadata.EntryPoint] | None = None

    def register(
        self, name: str, factory: LoaderFactory, *, display_name: str | None = None
    ) -> None:
        """Register (or replace) platform `name`; it takes precedence over any other source."""
        with self._lock:
            self._factories[name] = factory
            if display_name is not None:
                self._display_names[name] = display_name

    def known_platforms(self) -> tuple[str, ...]:
        """Every platform name this registry can resolve (installed or not), sorted."""
        with self._lock:
            names = set(self._factories) | set(self._entry_points_locked()) | set(_BUILTIN)
        return tuple(sorted(names))

    def make_loader(
        self,
        platform: str,
        servable_id: ServableId,
        path: str,
        config: Mapping[str, Any] = _EMPTY,
    ) -> Loader:
        """A Loader for one version at `path` (cheap: nothing is loaded yet).

        Raises NotFound for an unknown platform and FailedPrecondition for a known one whose
        framework is not installed (the message names the pip extra), or whose files are not in
        `path` while another platform's are (a platform forced by the model config).
        """
        mismatch = platform_mismatch(platform, servable_id, path)
        if mismatch is not None:
            raise FailedPrecondition(mismatch)
        return self._factory(platform)(servable_id, path, config)

    def display_name(self, platform: str) -> str:
        """The V2 metadata `platform` string, e.g. "onnxruntime_onnx"; unknown names as given."""
        with self._lock:
            if platform in self._display_names:
                return self._display_names[platform]
        builtin = _BUILTIN.get(platform)
        return builtin.display_name if builtin is not None else platform

    def _factory(self, name: str) -> LoaderFactory:
        with self._lock:
            factory = self._factories.get(name)
            entry_point = self._entry_points_locked().get(name)
        if factory is not None:
            return factory
        if entry_point is not None:
            factory = _load_entry_point(name, entry_point)
        else:
            factory = _load_builtin(name, self.known_platforms())
        with self._lock:
            return self._factories.setdefault(name, factory)

    def _entry_points_locked(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._entry_points is None:
            found = importlib.metadata.entry_points(group=self._group)
            self._entry_points = {ep.name: ep for ep in found}
        return self._entry_points


def detect_platform(path: str) -> str | None:
    """The platform of the version directory `path` from the files it holds, or None.

    Raises what the filesystem raises when `path` cannot be listed (FileNotFoundError, ...).
    """
    fs, root = fsspec.core.url_to_fs(path)
    names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)}
    return next((platform for file, platform in PLATFORM_FILES if file in names), None)


def platform_mismatch(platform: str, servable_id: ServableId, path: str) -> str | None:
    """Why `platform` cannot load the version at `path`: none of its files are there but another
    platform's are (the model config set the platform); None when nothing says so (also when
    `path` cannot be listed: the loader reports that)."""
    own = [file for file, name in PLATFORM_FILES if name == platform]
    if not own:
        return None  # a third-party platform: its files are its own business
    try:
        fs, root = fsspec.core.url_to_fs(path)
        names = sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False))
    except Exception:  # unreadable here: the loader reports the real error
        return None
    if set(own) & set(names):
        return None
    found = [(file, name) for file, name in PLATFORM_FILES if file in names]
    if not found:
        return None
    file, detected = found[0]
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return (
        f"model {servable_id.name} version {servable_id.version}: the model config sets platform"
        f' "{platform}", which needs {" or ".join(own)},'
        f" but {_without_credentials(path)} holds {shown};"
        f' {file} is platform "{detected}". Set model_platform: "{detected}" (YAML: platform:'
        f" {detected}) for this model, or leave it out to detect the platform from the files"
    )


def _without_credentials(path: str) -> str:
    """`path` with any user:password@ of a URL left out (messages reach clients and logs)."""
    scheme, sep, rest = path.partition("://")
    if not sep:
        return path
    host, slash, tail = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{tail}"


#: The registry `make_loader` and the other module functions use.
DEFAULT_REGISTRY = PlatformRegistry()


def register_platform(
    name: str, factory: LoaderFactory, *, display_name: str | None = None
) -> None:
    """Register platform `name` in the default registry (see `PlatformRegistry.register`)."""
    DEFAULT_REGISTRY.register(name, factory, display_name=display_name)


def known_platforms() -> tuple[str, ...]:
    """Every platform name the default registry can resolve, sorted."""
    return DEFAULT_REGISTRY.known_platforms()


def make_loader(
    platform: str, servable_id: ServableId, path: str, config: Mapping[str, Any] = _EMPTY
) -> Loader:
    """A Loader from the default registry (see `PlatformRegistry.make_loader`)."""
    return DEFAULT_REGISTRY.make_loader(platform, servable_id, path, config)


def platform_display_name(platform: str) -> str:
    """The V2 metadata `platform` string, e.g. onnx → "onnxruntime_onnx"."""
    return DEFAULT_REGISTRY.display_name(platform)


def _load_entry_point(name: str, entry_point: importlib.metadata.EntryPoint) -> LoaderFactory:
    try:
        factory: LoaderFactory = entry_point.load()
    except ImportError as exc:
        raise FailedPrecondition(
            f'platform "{name}" could not be imported from {entry_point.value}: {exc}'
        ) from exc
    return factory


def _load_builtin(name: str, known: tuple[str, ...]) -> LoaderFactory:
    builtin = _BUILTIN.get(name)
    if builtin is None:
        raise NotFound(f'unknown platform "{name}" (known: {", ".join(known)})')
    not_installed = f'platform "{name}" is not installed: pip install "pyserving[{builtin.extra}]"'
    module_name, _, attribute = builtin.factory.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if builtin.extra is None:
            raise FailedPrecondition(f'platform "{name}" could not be imported: {exc}') from exc
        raise FailedPrecondition(not_installed) from exc
    except Exception as exc:  # a framework failing at import time fails its versions only
        raise FailedPrecondition(f'platform "{name}" could not be imported: {exc}') from exc
    factory: LoaderFactory = getattr(module, attribute)
    return factory
