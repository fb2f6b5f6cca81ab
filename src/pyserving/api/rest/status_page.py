"""The status page (`GET /`, `/status`) and the JSON it polls (`GET /status.json`).

The page is one self-contained HTML file shipped in the package (`pages/status.html`: inline CSS
and script, no fonts, images or CDN); its Content-Security-Policy lets it talk only to this
server. It fetches `/status.json` every second and redraws: models, versions and their states,
labels, request and error rates (the differences between two polls of the counters), mean batch
size. `status_json` reads the server's state and its Prometheus counters; it costs a walk over
the metrics registry, so the REST app runs it off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import orjson

from pyserving import metrics
from pyserving.errors import NotFound
from pyserving.serving.inference import InferenceService

__all__ = ["HTML", "HTML_HEADERS", "LabelsProvider", "status_json"]

#: model → label → version (the labels of the current config)
LabelsProvider = Callable[[], Mapping[str, Mapping[str, int]]]

HTML: bytes = resources.files("pyserving.api.rest").joinpath("pages/status.html").read_bytes()


def _script_hash(html: bytes) -> str:
    match = re.search(rb"<script>(.*?)</script>", html, re.DOTALL)
    assert match is not None, "pages/status.html has no inline script"
    digest = base64.b64encode(hashlib.sha256(match.group(1)).digest()).decode()
    return f"'sha256-{digest}'"


#: the page may run its own inline script and fetch from this server, nothing else
_CSP = (
    f"default-src 'none'; script-src {_script_hash(HTML)}; style-src 'unsafe-inline';"
    " connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'"
)
HTML_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-security-policy", _CSP.encode()),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
)
#: HTTP status codes counted as errors on the page
_ERROR_FROM = 400


def status_json(
    service: InferenceService, labels: LabelsProvider | None, server_version: str
) -> bytes:
    """What the page shows: every model's versions (states, errors), labels, request counters
    by status code, batch count and rows. Counters are totals since start; the page derives
    rates from two polls."""
    requests = _requests_by_model()
    batches = _batches_by_model()
    model_labels = labels() if labels is not None else {}
    models: list[dict[str, Any]] = []
    for name in sorted(service.model_names()):
        try:
            states = service.model_status(name)
        except NotFound:
            states = []
        by_code = requests.get(name, {})
        count, rows = batches.get(name, (0, 0.0))
        models.append(
            {
                "name": name,
                "versions": [
                    {
                        "version": str(s.id.version),
                        "state": s.state.name,
                        "error": s.error or "",
                    }
                    for s in states
                ],
                "labels": {k: str(v) for k, v in sorted(model_labels.get(name, {}).items())},
                "requests": {
                    "total": sum(by_code.values()),
                    "errors": sum(n for code, n in by_code.items() if _is_error(code)),
                    "by_code": by_code,
                },
                "batches": {"count": count, "rows": rows},
            }
        )
    used, budget = service.memory()
    server = {
        "name": "pyserving",
        "version": server_version,
        "time": time.time(),
        # --total_model_memory_limit_bytes (null: unlimited) and what loaded versions hold
        "memory": {"used_bytes": used, "budget_bytes": budget},
    }
    return orjson.dumps({"server": server, "models": models})


def _is_error(code: str) -> bool:
    return not code.isdigit() or int(code) >= _ERROR_FROM


def _requests_by_model() -> dict[str, dict[str, int]]:
    """model → HTTP status code → requests answered (REST and gRPC together)."""
    out: dict[str, dict[str, int]] = {}
    for family in metrics.REQUESTS.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            model, code = sample.labels["model"], sample.labels["code"]
            if not model:
                continue  # requests naming an unknown model
            codes = out.setdefault(model, {})
            codes[code] = codes.get(code, 0) + int(sample.value)
    return out


def _batches_by_model() -> dict[str, tuple[int, float]]:
    """model → (batches run, rows in them)."""
    counts: dict[str, int] = {}
    rows: dict[str, float] = {}
    for family in metrics.BATCH_SIZE.collect():
        for sample in family.samples:
            model = sample.labels.get("model", "")
            if sample.name.endswith("_count"):
                counts[model] = int(sample.value)
            elif sample.name.endswith("_sum"):
                rows[model] = sample.value
    return {m: (counts[m], rows.get(m, 0.0)) for m in counts}
