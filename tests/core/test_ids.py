"""core/ids.py: the one rule for version numbers written in requests."""

from __future__ import annotations

import pytest

from pyserving.core.ids import MAX_VERSION, check_version, parse_version
from pyserving.errors import InvalidInput


@pytest.mark.parametrize("text", ["0", "7", "007", str(MAX_VERSION)])
def test_ascii_digits_up_to_int64_are_versions(text: str) -> None:
    assert parse_version(text) == int(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\u0661",
        "1\u0662",
        "\u00b2",
        "9" * 20,
        str(MAX_VERSION + 1),
        "1" * 4300,
        "-1",
        "+1",
        " 1",
    ],
    ids=[
        "empty",
        "arabic",
        "mixed",
        "superscript",
        "20-digits",
        "2**63",
        "4300",
        "neg",
        "plus",
        "sp",
    ],
)
def test_anything_else_is_invalid_input_issue_14(text: str) -> None:
    with pytest.raises(InvalidInput, match="ASCII digits"):
        parse_version(text)


def test_check_version_bounds_int64_fields_issue_14() -> None:
    assert check_version(0) == 0 and check_version(MAX_VERSION) == MAX_VERSION
    for bad in (-1, MAX_VERSION + 1):
        with pytest.raises(InvalidInput):
            check_version(bad)
