"""Our .proto files against the real ones: every message we define must have the same field
names, numbers, types and labels as tritonclient's and tensorflow-serving-api's, so the wire
formats agree. (Each side is read in a child process: both register the same names.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

HELPER = Path(__file__).with_name("dump_descriptors.py")
# ours only: TF Serving's pip package does not ship session_bundle_config.proto, and the
# tritonclient that installs beside protobuf 7 predates Triton's per-response statistics
NEWER_THAN_CLIENT_PACKAGES = {"inference.ModelStatistics.response_stats"}
NOT_IN_CLIENT_PACKAGES = {
    "tensorflow.serving.BatchingParameters",
    "inference.InferResponseStatistics",
}


def dump(mode: str, stdin: str = "") -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HELPER), mode],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_messages_match_the_real_protos() -> None:
    ours = dump("ours")
    real = dump("real", json.dumps(sorted(ours)))
    missing = sorted(n for n, f in real.items() if f is None and n not in NOT_IN_CLIENT_PACKAGES)
    assert not missing, f"messages the real packages do not define: {missing}"
    mismatched = {
        f"{message}.{name}": (spec, real[message].get(name))
        for message, ours_fields in ours.items()
        if real.get(message) is not None
        for name, spec in ours_fields.items()
        if real[message].get(name) != spec and f"{message}.{name}" not in NEWER_THAN_CLIENT_PACKAGES
    }
    assert not mismatched
    assert len([n for n in real if real[n] is not None]) > 60
