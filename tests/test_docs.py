"""The documentation and examples shipped in the repository: links resolve, nothing points
outside the repository, every serve flag is documented, the example configs and the example
python servable work."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest

from pyserving import cli_flags, metrics
from pyserving.batching.options import load_batching_parameters
from pyserving.core.ids import ServableId
from pyserving.demo import write_demo_repository
from pyserving.platforms.python import PythonLoader
from pyserving.serving.config_file import load_config_file
from pyserving.serving.config_keys import MODEL_KEYS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
MARKDOWN = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_issue_16(page: Path) -> None:
    broken = []
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path_text, _, anchor = target.partition("#")
        path = (page.parent / path_text).resolve() if path_text else page
        missing_anchor = (
            anchor and path.suffix == ".md" and anchor not in _anchors(path.read_text())
        )
        if not path.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_nothing_in_the_repository_points_outside_it_issue_16() -> None:
    # the team's design notes live outside the repository; users never get them
    needles = (
        "../" + "shared",
        "/work/" + "shared",
        "INTERFACE" + ".md",
        "ARCHITECTURE" + ".md",
        "STYLE" + ".md",
        "reference/" + "tfserving.md",
        "reference/" + "v2-protocol.md",
    )
    offenders = []
    for folder in ("src", "tests", "docs", "examples", "benchmarks", "scripts"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".yml", ".sh", ".toml"):
                text = path.read_text(encoding="utf-8", errors="replace")
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in needles if n in text]
    for name in ("README.md", "CHANGELOG.md", "Makefile", "pyproject.toml"):
        text = (ROOT / name).read_text(encoding="utf-8")
        offenders += [f"{name}: {n}" for n in needles if n in text]
    assert not offenders


def test_cli_page_documents_every_serve_flag_issue_16() -> None:
    parser = cli_flags.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = [
        option
        for action in subparsers.choices["serve"]._actions
        if not action.dest.startswith("tf_ignored_")
        for option in action.option_strings
        if option.startswith("--")
        and option != "--help"
        and option != "--version"
        and "_" not in option
        and f"`{option}`" not in page
    ]
    assert not missing, f"docs/cli.md lacks {missing}: regenerate its table from the parser"


def test_metrics_page_documents_every_metric_issue_16() -> None:
    page = (DOCS / "metrics.md").read_text(encoding="utf-8")
    names = {family.name for family in metrics.REGISTRY.collect()}
    # prometheus_client drops a counter's _total suffix from its family name
    missing = [n for n in names if f"`{n}`" not in page and f"`{n}_total`" not in page]
    assert names and not missing, f"docs/metrics.md lacks {missing}"


def test_config_page_documents_every_model_key_issue_16() -> None:
    page = (DOCS / "config.md").read_text(encoding="utf-8")
    missing = [key for key in MODEL_KEYS if f"| `{key}` |" not in page]
    assert not missing, f"docs/config.md lacks the model keys {missing}"


@pytest.mark.parametrize(
    ("name", "models"),
    [
        ("demo.yaml", ["mlp", "twoio"]),
        ("models.yaml", ["mlp", "twoio"]),
        ("models.config", ["mlp", "twoio"]),
        ("python.yaml", ["scale", "mlp"]),
        ("streaming.yaml", ["generator"]),
    ],
)
def test_example_model_configs_load_issue_16(name: str, models: list[str]) -> None:
    config = load_config_file(EXAMPLES / name)
    assert config.names() == models
    for model in config.models:  # relative base paths resolve against examples/
        assert Path(model.base_path).is_absolute()
        assert Path(model.base_path).parent.parent == ROOT or model.base_path.startswith(
            str(EXAMPLES)
        )


def test_demo_config_points_at_what_pyserving_demo_writes_issue_16(tmp_path: Path) -> None:
    write_demo_repository(tmp_path / "demo-models")
    for model in load_config_file(EXAMPLES / "demo.yaml").models:
        relative = Path(model.base_path).relative_to(ROOT)
        assert (tmp_path / relative).is_dir(), relative


def test_example_batching_files_say_the_same_issue_16() -> None:
    text_proto = load_batching_parameters(EXAMPLES / "batching.pbtxt")
    yaml_form = load_batching_parameters(EXAMPLES / "batching.yaml")
    assert text_proto == yaml_form
    assert (text_proto.max_batch_size, text_proto.batch_timeout_micros) == (32, 1000)


def test_example_python_servable_runs_both_signatures_issue_16() -> None:
    version = EXAMPLES / "python-model" / "1"
    loader = PythonLoader(ServableId("scale", 1), str(version), {"allow_python": True})
    servable = loader.load()
    try:
        x = np.array([[1, 2, 3, 4]], dtype=np.float32)
        np.testing.assert_array_equal(
            servable.run("serving_default", {"x": x})["y"], [[2.5, 4.5, 6.5, 8.5]]
        )
        texts = np.array([b"a b c", b"hello"], dtype=object)
        np.testing.assert_array_equal(servable.run("count_words", {"text": texts})["words"], [3, 1])
    finally:
        loader.unload()
