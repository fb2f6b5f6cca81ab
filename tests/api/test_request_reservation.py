"""A request's reservation in the in-flight budget: its body, then what decoding it builds."""

from __future__ import annotations

import pytest

from pyserving.api.limits import RequestBytesBudget, Reservation
from pyserving.errors import Unavailable


def test_what_decoding_builds_counts_and_is_released_with_the_body_issue_14():
    budget = RequestBytesBudget(100)
    first, second = Reservation(budget), Reservation(budget)
    first.reserve(10)  # the body
    first.reserve(60)  # what decoding it builds
    assert budget.used_bytes == 70
    second.reserve(20)
    with pytest.raises(Unavailable, match="--max-inflight-request-bytes"):
        second.reserve(20)  # its decoding would pass the budget
    first.release()
    second.release()
    assert budget.used_bytes == 0


def test_a_request_alone_is_admitted_whatever_decoding_it_builds_issue_14():
    budget = RequestBytesBudget(100)
    alone = Reservation(budget)
    alone.reserve(80)
    alone.reserve(500)  # only its own bytes are in flight: admitted, as a large body alone is
    alone.release()
    assert budget.used_bytes == 0


def test_decoding_that_outlives_its_request_holds_nothing_issue_14():
    budget = RequestBytesBudget(100)
    late = Reservation(budget)
    late.reserve(10)
    late.release()
    with pytest.raises(Unavailable):
        late.reserve(10)
    assert budget.used_bytes == 0
