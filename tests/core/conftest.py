"""Fixtures of the core suites."""

from __future__ import annotations

import pytest

from pyserving.core.scheduler import RetryScheduler
from tests.fakes import ManualClock


@pytest.fixture
def manual_scheduler():
    """A RetryScheduler without a thread on a ManualClock: retries run on `run_due()` only."""
    clock = ManualClock()
    scheduler = RetryScheduler(clock=clock, threaded=False)
    yield clock, scheduler
    scheduler.close()
