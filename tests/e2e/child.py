"""Runs a client script in a child process (tritonclient's and tensorflow's protos cannot share
this process with pyserving's) and reads the answer it prints as `RESULT {json}`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

PREFIX = "RESULT "


def child_result(script: Path, *args: str, timeout_s: float = 240) -> Any:
    """The JSON of the last `RESULT ` line `python script *args` prints; fails the test, with the
    child's output, when it exits non-zero or prints none."""
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(PREFIX)]
    assert done.returncode == 0 and lines, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(lines[-1].removeprefix(PREFIX))
