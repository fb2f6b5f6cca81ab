"""Runs tf_checks.py in a child process, so the rest of the suite never pays for importing
TensorFlow (seconds and hundreds of MiB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = Path(__file__).with_name("tf_checks.py")


@pytest.mark.slow
def test_tensorflow_platform_checks_pass_in_their_own_process() -> None:
    root = Path(__file__).parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
