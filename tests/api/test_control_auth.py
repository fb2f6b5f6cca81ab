"""`--control-token-file`: a bearer token, compared in constant time, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyserving.api.control_auth import ControlAuth, ControlTokenError, load_control_token
from pyserving.errors import Code, Unauthenticated

TOKEN = "s3cret-token-value"


def test_the_right_bearer_token_passes_issue_15() -> None:
    auth = ControlAuth(TOKEN)
    auth.check(f"Bearer {TOKEN}")
    auth.check(f"bearer  {TOKEN} ")
    auth.check_metadata((("user-agent", "x"), ("authorization", f"Bearer {TOKEN}")))
    auth.check_metadata((("authorization", f"Bearer {TOKEN}".encode()),))


@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_token_is_unauthenticated_saying_it_is_missing_issue_15(
    value: str | None,
) -> None:
    with pytest.raises(Unauthenticated, match="needs a token") as caught:
        ControlAuth(TOKEN).check(value)
    assert caught.value.code is Code.UNAUTHENTICATED and caught.value.http_status == 401


@pytest.mark.parametrize(
    "value", [f"Bearer {TOKEN}x", "Bearer", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"]
)
def test_a_wrong_token_is_unauthenticated_and_not_echoed_issue_15(value: str) -> None:
    with pytest.raises(Unauthenticated, match="token is wrong") as caught:
        ControlAuth(TOKEN).check(value)
    assert TOKEN not in caught.value.message


def test_metadata_without_authorization_is_missing_issue_15() -> None:
    with pytest.raises(Unauthenticated, match="needs a token"):
        ControlAuth(TOKEN).check_metadata((("x-other", "Bearer " + TOKEN),))


def test_the_token_never_shows_in_repr_issue_15() -> None:
    assert TOKEN not in repr(ControlAuth(TOKEN))


def test_token_file_is_read_once_and_stripped_issue_15(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    auth = load_control_token(str(path))
    path.write_text("changed")
    auth.check(f"Bearer {TOKEN}")


def test_empty_or_unreadable_token_file_is_refused_in_one_line_issue_15(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    with pytest.raises(ControlTokenError, match=r"is empty"):
        load_control_token(str(empty))
    with pytest.raises(ControlTokenError, match=r"cannot read --control-token-file .*missing"):
        load_control_token(str(tmp_path / "missing"))
