"""ControlRoots: a base path sent over model control must lie under a configured root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyserving.errors import PermissionDenied
from pyserving.serving.control_roots import ControlRoots


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    models = tmp_path / "models"
    (models / "mlp").mkdir(parents=True)
    (models / "extra").mkdir()
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    os.symlink(secret, models / "mlp" / "escape")
    return {"models": models, "mlp": models / "mlp", "secret": secret}


def test_paths_under_a_started_base_path_or_an_extra_root_are_allowed_issue_15(tree) -> None:
    roots = ControlRoots([str(tree["mlp"])], [str(tree["models"] / "extra"), "s3://bucket/m"])
    roots.check("a", str(tree["mlp"]))
    roots.check("b", str(tree["mlp"] / "v2"))
    roots.check("c", str(tree["models"] / "extra" / "x"))
    roots.check("d", f"file://{tree['mlp']}/sub")
    roots.check("e", "s3://bucket/m")
    roots.check("f", "s3://bucket/m/inner/model")
    roots.check("g", "S3://bucket/m/inner")


@pytest.mark.parametrize(
    ("candidate", "why"),
    [
        ("{models}", "outside every allowed root"),
        ("{models}/mlpx", "outside every allowed root"),
        ("{mlp}/../elsewhere", "resolves to .*elsewhere"),
        ("{mlp}/escape", "resolves to .*elsewhere"),
        ("/etc", "outside every allowed root"),
        ("file:///etc", "outside every allowed root"),
        ("ftp://attacker.example/m", "no allowed root uses the ftp:// scheme"),
        ("http://attacker.example/m", "no allowed root uses the http:// scheme"),
        ("memory://m", "no allowed root uses the memory:// scheme"),
        ("s3://other-bucket/m", "outside every allowed root"),
        ("s3://bucket/m2", "outside every allowed root"),
        ("s3://bucket/m/../x", r"'\.' or '\.\.' segment"),
        ("s3://bucket/m/%2e%2e/x", r"'\.' or '\.\.' segment"),
        ("s3://bucket/m//x", r"'\.' or '\.\.' segment"),
        ("simplecache::s3://bucket/m", r"chained fsspec URLs \('::'\)"),
        ("{mlp}/x::ftp://attacker.example/m", r"chained fsspec URLs \('::'\)"),
    ],
)
def test_paths_outside_every_root_are_permission_denied_saying_why_issue_15(
    tree: dict[str, Path], candidate: str, why: str
) -> None:
    roots = ControlRoots([str(tree["mlp"])], ["s3://bucket/m"])
    path = candidate.format(models=tree["models"], mlp=tree["mlp"])
    with pytest.raises(PermissionDenied, match=why) as caught:
        roots.check("evil", path)
    message = caught.value.message
    assert 'model "evil"' in message and "--model-control-roots" in message
    assert str(tree["mlp"]) in message  # says what is allowed


def test_no_roots_allow_nothing_issue_15(tmp_path: Path) -> None:
    with pytest.raises(PermissionDenied, match=r"allowed: .*: none"):
        ControlRoots([]).check("m", str(tmp_path))


@pytest.mark.parametrize(
    ("prefix", "host"), [("file:/", ""), ("file://localhost", "localhost"), ("local://x", "x")]
)
def test_a_file_url_host_is_part_of_the_opened_path_issue_15(
    tree: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str, host: str
) -> None:
    # fsspec opens file://HOST/p as HOST/p under the working directory: a copy planted there
    # lies outside every root even though /p is inside one
    cwd = tmp_path / "cwd"
    planted = cwd / host / str(tree["mlp"]).lstrip("/")
    planted.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    roots = ControlRoots([str(tree["mlp"])])
    with pytest.raises(PermissionDenied, match="outside every allowed root") as caught:
        roots.check("evil", prefix + str(tree["mlp"]))
    assert f"resolves to {planted}" in caught.value.message


def test_a_nul_byte_is_permission_denied_with_a_message_issue_15(tree: dict[str, Path]) -> None:
    roots = ControlRoots([str(tree["mlp"])])
    for candidate in (f"{tree['mlp']}\x00", f"file://{tree['mlp']}/x\x00y"):
        with pytest.raises(PermissionDenied, match="it holds a NUL byte"):
            roots.check("evil", candidate)


def test_check_returns_the_real_path_to_poll_issue_15(tree: dict[str, Path]) -> None:
    os.symlink(tree["mlp"], tree["models"] / "link")
    roots = ControlRoots([str(tree["models"])], ["s3://bucket/m"])
    assert roots.check("a", str(tree["models"] / "link")) == str(tree["mlp"].resolve())
    assert roots.check("b", f"file://{tree['models']}/link/v") == str(tree["mlp"].resolve() / "v")
    assert roots.check("c", "s3://bucket/m/x") == "s3://bucket/m/x"
