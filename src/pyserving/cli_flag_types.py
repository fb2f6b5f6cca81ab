"""The value types of `pyserving serve`'s flags: what each flag's text must be."""

from __future__ import annotations

import argparse
import os

# cli_help.Parser drops these names from argparse's "invalid <type> value" errors
__all__ = [
    "boolean",
    "comma_list",
    "file_name",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "worker_count",
]


def non_negative_int(text: str) -> int:
    """An integer >= 0 (ports, counts, byte sizes where 0 means off)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A number of seconds >= 0 (0 usually means no limit)."""
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number > 0."""
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def boolean(text: str) -> bool:
    """TF Serving's boolean flag values: `--flag`, `--flag=true|false|1|0`."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def comma_list(text: str) -> tuple[str, ...]:
    """The non-empty items of a comma-separated list, stripped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def file_name(text: str) -> str:
    """A plain file name: no directory part."""
    if "/" in text or "\\" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"expected a plain file name, got {text!r}")
    return text


#: `--workers` at most this many per usable CPU: each worker loads every model, and more
#: processes than this only add memory and context switches
WORKERS_PER_CPU_LIMIT = 4


def worker_count(text: str) -> int:
    """`--workers`: a count > 0 and at most `WORKERS_PER_CPU_LIMIT` per usable CPU, or `auto`
    for one per CPU this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    if text == "auto":
        return cpus
    value = positive_int(text)
    if value > WORKERS_PER_CPU_LIMIT * cpus:
        raise argparse.ArgumentTypeError(
            f"{value} workers is more than {WORKERS_PER_CPU_LIMIT} per CPU this process may use"
            f" ({cpus} CPUs: at most {WORKERS_PER_CPU_LIMIT * cpus}); each worker loads every"
            " model, so more only add memory (auto: one per CPU)"
        )
    return value
