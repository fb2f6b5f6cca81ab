"""Reads what the tests need from deploy/Dockerfile: its exec-form command line, ports, user and
health check (no Docker engine is needed)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Dockerfile"


@dataclass(frozen=True)
class FinalStage:
    """The instructions of the Dockerfile's last stage that the container runs with."""

    entrypoint: list[str]
    cmd: list[str]
    exposed: set[int]
    user: str
    healthcheck: list[str]


def final_stage(path: Path = DOCKERFILE) -> FinalStage:
    """The last stage's ENTRYPOINT, CMD (both must be exec form), EXPOSE, USER, HEALTHCHECK."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages = re.split(r"^FROM\s", text, flags=re.MULTILINE)
    found: dict[str, str] = {}
    exposed: set[int] = set()
    for line in stages[-1].splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "EXPOSE":
            exposed.update(int(port.split("/")[0]) for port in rest.split())
        elif instruction in ("ENTRYPOINT", "CMD", "USER", "HEALTHCHECK"):
            found[instruction] = rest.strip()
    health = found["HEALTHCHECK"]
    health_cmd = health[health.index("CMD ") + 4 :].strip()
    return FinalStage(
        entrypoint=_exec_form(found["ENTRYPOINT"]),
        cmd=_exec_form(found["CMD"]),
        exposed=exposed,
        user=found["USER"],
        healthcheck=_exec_form(health_cmd),
    )


def _exec_form(value: str) -> list[str]:
    if not value.startswith("["):
        raise AssertionError(f"not exec form (a shell would be PID 1): {shlex.quote(value)}")
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), value
    return parsed
