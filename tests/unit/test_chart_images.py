"""The Dockerfiles agree with what runs them: files they copy exist, the command they start is
a real subcommand, and the user they run as is the one the chart and the operator expect."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from marfleet.operator import render
from marfleet.runtime.cli import SUBCOMMANDS

from e2e.prometheus.chart import CHART_DIR, REPO_ROOT

IMAGES = CHART_DIR / "images"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("dockerfile", sorted(IMAGES.glob("*.Dockerfile")), ids=lambda p: p.stem)
def test_copied_sources_exist_and_the_command_is_a_subcommand(dockerfile: Path) -> None:
    for op, args in instructions(dockerfile):
        if op == "COPY" and "--from" not in args:
            for source in args.split()[:-1]:
                assert (REPO_ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
    stage = dict(final_stage(dockerfile))
    assert json.loads(stage["ENTRYPOINT"]) == ["marfleet"]
    assert json.loads(stage["CMD"])[0] in SUBCOMMANDS


def test_operator_image_runs_as_the_user_the_chart_sets() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    user = dict(final_stage(IMAGES / "operator.Dockerfile"))["USER"]
    expected = values["operator"]["podSecurityContext"]
    assert user == f"{expected['runAsUser']}:{expected['runAsGroup']}"


def test_runtime_image_runs_as_the_user_the_operator_sets() -> None:
    user = dict(final_stage(IMAGES / "runtime.Dockerfile"))["USER"]
    assert user == f"{render.RUNTIME_UID}:{render.RUNTIME_UID}"


def test_runtime_flavours_differ_only_in_pytorch_wheels() -> None:
    stages = " ".join(args for op, args in instructions(IMAGES / "runtime.Dockerfile"))
    assert "whl/cpu" in stages and "whl/cu" in stages
    assert "FROM torch-${FLAVOR}" in (IMAGES / "runtime.Dockerfile").read_text()


@pytest.mark.parametrize(("image", "extra"), [("operator", "operator"), ("runtime", "runtime")])
def test_images_install_the_project_extra_and_repeat_no_dependency(image: str, extra: str) -> None:
    """pyproject.toml is the one list of dependencies and version floors."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert extra in project["optional-dependencies"]
    runs = " ".join(
        args for op, args in instructions(IMAGES / f"{image}.Dockerfile") if op == "RUN"
    )
    assert f'".[{extra}]"' in runs
    assert not re.search(r"[A-Za-z0-9_-]+(>=|==|~=)\d", runs), runs
