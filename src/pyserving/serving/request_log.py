"""Sampled request logs: one JSON line per sampled request, written off the request path.

A model's `logging: {sampling_rate: 0.01, path: DIR}` (YAML) or TF Serving's `logging_config`
(`sampling_config.sampling_rate`, `log_collector_config.filename_prefix`) turns it on for that
model (docs/operations.md, "Request logs"). A sampled request is handed, as references to its
arrays, to one background writer thread through a bounded queue; the writer turns it into a JSON
line (V2-style tensors, so `examples/replay_request_log.py` can send it again) and appends it to
`DIR/<prefix>.jsonl`, rotating at `max_file_bytes` and keeping `max_files` old files. A full
queue, a failing disk or a directory that cannot be written drops the line, counted in
`pyserving_request_logs_dropped_total`; the request itself is already answered.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import numpy as np
import orjson

from pyserving import metrics
from pyserving.errors import InvalidInput
from pyserving.platforms.signature import NUMPY_TO_V2
from pyserving.proto import logging_config_pb2
from pyserving.serving import tracing

__all__ = [
    "MAX_LINE_BYTES",
    "LogEntry",
    "ModelLog",
    "RequestLogConfig",
    "RequestLogs",
    "config_from_proto",
    "config_from_yaml",
    "configs_of",
]

logger = logging.getLogger("pyserving.request_log")

#: a line over this many bytes keeps the tensors' names, types and shapes but not their data
MAX_LINE_BYTES = 1 << 20
#: sampled requests waiting for the writer, at most (and at most `_MAX_QUEUED_BYTES` of arrays)
_MAX_QUEUED = 1024
_MAX_QUEUED_BYTES = 64 << 20
#: the YAML keys of `logging:`
LOGGING_KEYS = frozenset({"sampling_rate", "path", "max_file_bytes", "max_files"})


@dataclass(frozen=True, slots=True)
class RequestLogConfig:
    """Where and how often one model's requests are logged."""

    sampling_rate: float
    directory: str
    #: file names are `<prefix>.jsonl`, then `.jsonl.1` ... `.jsonl.<max_files>` once rotated
    prefix: str
    max_file_bytes: int = 64 << 20
    max_files: int = 5


def config_from_yaml(value: object, model: str, root: Path) -> RequestLogConfig:
    """A model's `logging:` mapping, checked; relative paths resolve against `root`."""
    if not isinstance(value, Mapping):
        raise InvalidInput(f'model "{model}": logging must be a mapping (sampling_rate, path)')
    unknown = sorted(str(k) for k in value if k not in LOGGING_KEYS)
    if unknown:
        raise InvalidInput(
            f'model "{model}": unknown logging key {unknown[0]!r}'
            f" (known: {', '.join(sorted(LOGGING_KEYS))})"
        )
    rate = value.get("sampling_rate")
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0.0 <= rate <= 1.0:
        raise InvalidInput(f'model "{model}": logging.sampling_rate must be a number from 0 to 1')
    path = value.get("path")
    if not isinstance(path, str) or not path:
        raise InvalidInput(f'model "{model}": logging.path (the log directory) is required')
    sizes: dict[str, int] = {}
    for key, least in (("max_file_bytes", 4096), ("max_files", 1)):
        if key in value:
            number = value[key]
            if not isinstance(number, int) or isinstance(number, bool) or number < least:
                raise InvalidInput(f'model "{model}": logging.{key} must be an integer >= {least}')
            sizes[key] = number
    directory = path if "://" in path else str(root / path)
    return RequestLogConfig(float(rate), directory, model, **sizes)


def config_from_proto(
    message: logging_config_pb2.LoggingConfig, model: str, root: Path
) -> RequestLogConfig | None:
    """TF Serving's `logging_config`: its filename_prefix names the directory and the files'
    prefix (`/logs/mlp` → `/logs/mlp.jsonl`); None when it has no prefix (nothing to write)."""
    prefix = message.log_collector_config.filename_prefix
    if not prefix:
        return None
    rate = message.sampling_config.sampling_rate
    if not 0.0 <= rate <= 1.0:
        raise InvalidInput(f'model "{model}": sampling_config.sampling_rate must be from 0 to 1')
    full = Path(prefix) if os.path.isabs(prefix) else root / prefix
    return RequestLogConfig(rate, str(full.parent), full.name or model)


@dataclass(slots=True)
class LogEntry:
    """One sampled request, as the writer gets it (the arrays are not copied)."""

    time: float
    model: str
    version: int | None
    protocol: str
    inputs: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]
    status: str
    latency_s: float


class ModelLog:
    """One model's sampler and sink; `offer` never blocks.

    Thread-safety: `sample` and `offer` may be called from any thread."""

    __slots__ = ("_dropped", "_logs", "config", "model")

    def __init__(self, logs: RequestLogs, model: str, config: RequestLogConfig) -> None:
        self._logs = logs
        self.model = model
        self.config = config
        self._dropped = metrics.REQUEST_LOGS_DROPPED.labels(model)

    def sample(self) -> bool:
        """Whether to log this request (a coin with the model's sampling rate)."""
        rate = self.config.sampling_rate
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)

    def offer(self, entry: LogEntry) -> None:
        """Queue `entry` for the writer, or drop it (counted) when the writer is behind."""
        if not self._logs.enqueue(self, entry):
            self._dropped.inc()

    def dropped(self) -> None:
        self._dropped.inc()


class RequestLogs:
    """Every model's request log and the one writer thread behind them.

    Thread-safety: `get` and `configure` may be called from any thread; the files belong to the
    writer thread. Blocking: nothing but `close` waits. Ownership: the writer is a daemon thread
    started with the first model that logs; `close` drains and stops it.
    """

    def __init__(self) -> None:
        #: model → its log; replaced whole by `configure` (read lock-free on every request)
        self.models: dict[str, ModelLog] = {}
        self._queue: queue.SimpleQueue[tuple[ModelLog, LogEntry] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _queued, _queued_bytes and _thread
        self._queued = 0
        self._queued_bytes = 0
        self._thread: threading.Thread | None = None
        self._files: dict[str, _LogFile] = {}  # writer thread only

    def configure(self, configs: Mapping[str, RequestLogConfig]) -> None:
        """Log these models from now on (a config load or reload); others stop logging."""
        old = self.models
        self.models = {
            name: old[name]
            if name in old and old[name].config == config
            else ModelLog(self, name, config)
            for name, config in configs.items()
        }
        tracing.observe_edges(bool(self.models))
        if self.models:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._write, name="pyserving-request-log", daemon=True
                    )
                    self._thread.start()

    def enqueue(self, log: ModelLog, entry: LogEntry) -> bool:
        nbytes = _nbytes(entry)
        with self._lock:
            if self._queued >= _MAX_QUEUED or self._queued_bytes + nbytes > _MAX_QUEUED_BYTES:
                return False
            self._queued += 1
            self._queued_bytes += nbytes
        self._queue.put((log, entry))
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (up to `timeout_s`), close the files, stop the writer."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    # --- writer thread ----------------------------------------------------------------------

    def _write(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            log, entry = item
            with self._lock:
                self._queued -= 1
                self._queued_bytes -= _nbytes(entry)
            try:
                line = encode(entry)
                self._file(log).write(line)
            except Exception as exc:  # a full disk, a read-only directory: drop the line
                log.dropped()
                logger.debug("request log of %s: cannot write: %s", log.model, exc)
        for file in self._files.values():
            file.close()
        self._files.clear()

    def _file(self, log: ModelLog) -> _LogFile:
        config = log.config
        key = os.path.join(config.directory, config.prefix)
        file = self._files.get(key)
        if file is None or file.config != config:
            if file is not None:
                file.close()
            file = _LogFile(config)
            self._files[key] = file
        return file


class _LogFile:
    """One log file, opened on first write and rotated by size (writer thread only)."""

    def __init__(self, config: RequestLogConfig) -> None:
        self.config = config
        self.path = Path(config.directory) / f"{config.prefix}.jsonl"
        self._out: IO[bytes] | None = None
        self._size = 0
        self._failed_at = 0.0

    def write(self, line: bytes) -> None:
        if self._out is None:
            self._open()
        assert self._out is not None
        if self._size and self._size + len(line) > self.config.max_file_bytes:
            self._rotate()
        try:
            self._out.write(line)
            self._out.flush()
        except OSError:
            self.close()  # reopened for the next line: the disk may have room again
            raise
        self._size += len(line)

    def _open(self) -> None:
        now = time.monotonic()
        if now - self._failed_at < 1.0:  # do not retry a failing directory for every line
            raise OSError(f"{self.path}: not writable (retried at most once a second)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = self.path.open("ab")
        except OSError:
            self._failed_at = now
            raise
        self._size = self._out.tell()

    def _rotate(self) -> None:
        self.close()
        base = str(self.path)
        for n in range(self.config.max_files - 1, 0, -1):
            if os.path.exists(f"{base}.{n}"):
                os.replace(f"{base}.{n}", f"{base}.{n + 1}")
        os.replace(base, f"{base}.1")
        self._open()

    def close(self) -> None:
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None


def encode(entry: LogEntry) -> bytes:
    """`entry` as one JSON line of at most MAX_LINE_BYTES (tensor data left out beyond it)."""
    document = _document(entry, with_data=True)
    line = orjson.dumps(document) + b"\n"
    if len(line) > MAX_LINE_BYTES:
        document = _document(entry, with_data=False)
        line = orjson.dumps(document) + b"\n"
    return line


def _document(entry: LogEntry, with_data: bool) -> dict[str, object]:
    return {
        "time": entry.time,
        "model": entry.model,
        "version": entry.version,
        "protocol": entry.protocol,
        "status": entry.status,
        "latency_s": round(entry.latency_s, 6),
        "inputs": [_tensor(name, array, with_data) for name, array in entry.inputs.items()],
        "outputs": [_tensor(name, array, with_data) for name, array in entry.outputs.items()],
    }


def _tensor(name: str, array: np.ndarray, with_data: bool) -> dict[str, object]:
    """A V2 JSON tensor (data flattened, row-major); BYTES as text, or base64 when not UTF-8."""
    tensor: dict[str, object] = {"name": name, "shape": list(array.shape)}
    if array.dtype.kind in "OSU":
        tensor["datatype"] = "BYTES"
        if with_data:
            tensor["data"] = [_text(item) for item in array.reshape(-1).tolist()]
    else:
        tensor["datatype"] = NUMPY_TO_V2.get(array.dtype, str(array.dtype))
        if with_data:
            tensor["data"] = array.reshape(-1).tolist()
    if not with_data:
        tensor["truncated"] = True
    return tensor


def _text(item: object) -> object:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(item).decode("ascii")}
    return item if isinstance(item, str) else str(item)


def _nbytes(entry: LogEntry) -> int:
    return sum(a.nbytes for a in entry.inputs.values()) + sum(
        a.nbytes for a in entry.outputs.values()
    )


class _Model(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def options(self) -> Mapping[str, object]: ...


def configs_of(models: Iterable[_Model]) -> dict[str, RequestLogConfig]:
    """Each model's request-log settings (its parsed `logging` option), for `configure`."""
    return {
        m.name: config
        for m in models
        if isinstance(config := m.options.get("logging"), RequestLogConfig)
    }
