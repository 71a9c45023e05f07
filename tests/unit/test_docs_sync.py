"""What the docs claim, checked against the code: the generated reference matches the CRD, the
config keys the TorchServe guide lists are accepted (or ignored) as it says, and every
relative link leads to a file."""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path

import pytest
from marfleet.runtime.config import ServerConfig, load_server_config
from marfleet.runtime.router.cli import parser as router_parser

from e2e.docs import crd_reference, markdown

REPO = Path(__file__).resolve().parents[2]
TORCHSERVE_GUIDE = REPO / "docs" / "moving-from-torchserve.md"
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])


def test_the_inferenceservice_reference_is_what_the_crd_says() -> None:
    expected = crd_reference.render(crd_reference.load_crd())
    committed = crd_reference.PAGE_PATH.read_text()
    diff = "\n".join(
        difflib.unified_diff(committed.splitlines(), expected.splitlines(), lineterm="", n=1)
    )
    assert committed == expected, f"run `python -m e2e.docs write`:\n{diff[:3000]}"


def test_the_reference_lists_every_validation_message_of_the_crd() -> None:
    crd = crd_reference.load_crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    page = crd_reference.PAGE_PATH.read_text()
    messages = [rule.message for rule in crd_reference.rules(schema, "")]
    assert len(messages) >= 10
    for message in messages:
        assert message.replace("<", "&lt;").replace(">", "&gt;") in page


def used_keys() -> list[tuple[str, str]]:
    rows = markdown.table(TORCHSERVE_GUIDE.read_text(), ["key", "example", "in marfleet"])
    return [(markdown.unquote(key)[0], markdown.unquote(example)[0]) for key, example, _ in rows]


def ignored_keys() -> list[str]:
    rows = markdown.table(TORCHSERVE_GUIDE.read_text(), ["key", "why"])
    return [key for cell, _ in rows for key in markdown.unquote(cell)]


@pytest.mark.parametrize(("key", "example"), used_keys(), ids=lambda v: str(v)[:30])
def test_a_key_the_guide_says_marfleet_uses_is_accepted_with_its_example(
    key: str, example: str
) -> None:
    config = load_server_config({key: example}, {})
    assert key not in config.ignored_keys


def test_the_guide_lists_every_key_marfleet_reads() -> None:
    # ServerConfig has one field per config.properties key, plus what is derived from them.
    derived = {"ignored_keys", "load_all_models", "metrics"}
    readable = {f.name for f in dataclasses.fields(ServerConfig)} - derived
    assert {key for key, _ in used_keys()} == readable


@pytest.mark.parametrize("key", ignored_keys())
def test_a_key_the_guide_says_marfleet_ignores_is_reported_as_ignored(key: str) -> None:
    assert load_server_config({key: "x"}, {}).ignored_keys == (key,)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_lead_to_files(page: Path) -> None:
    for target in markdown.links(page.read_text()):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{page.name} links to {target}, which does not exist"


def test_operations_lists_each_request_limit_with_its_real_default() -> None:
    page = (REPO / "docs" / "operations.md").read_text()
    rows = markdown.table(page, ["key", "default", "beyond it"])
    defaults = ServerConfig()
    assert len(rows) >= 8
    for key_cell, default_cell, _ in rows:
        (key,) = markdown.unquote(key_cell)
        (default,) = markdown.unquote(default_cell)
        assert load_server_config({key: default}, {}) == defaults, (
            f"operations.md: {key} default {default} is not the default"
        )


# A config key or router flag that bounds what a client, an archive or a download can make the
# server spend is named like one of these; the few that match and bound nothing are listed.
_LIMIT_NAME = re.compile(r"^max_|_size$|timeout|_seconds$|_limit$")
_NOT_LIMITS = {"batch_size", "max_batch_delay"}


def limits_section() -> str:
    page = (REPO / "docs" / "operations.md").read_text()
    return page.split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]


def test_operations_lists_every_server_limit_with_its_real_default() -> None:
    section = limits_section()
    named = {span for span in markdown.unquote(section)}
    limits = {
        f.name
        for f in dataclasses.fields(ServerConfig)
        if _LIMIT_NAME.search(f.name) and f.name not in _NOT_LIMITS
    }
    assert len(limits) >= 15
    assert sorted(limits - named) == [], "limits missing from operations.md#limits"
    defaults = ServerConfig()
    rows = markdown.table(section, ["key", "default", "what it bounds"])
    checked = 0
    for key_cell, default_cell, _ in rows:
        keys = [k for k in markdown.unquote(key_cell) if k in limits]
        values = [v for v in markdown.unquote(default_cell) if re.fullmatch(r"[\d.]+", v)]
        if keys and values:
            assert load_server_config({keys[-1]: values[0]}, {}) == defaults, (
                f"operations.md: {keys[-1]} default {values[0]} is not the default"
            )
            checked += 1
    assert checked >= 6


def test_operations_lists_every_router_limit_flag_with_its_default() -> None:
    rows = markdown.table(limits_section(), ["flag", "default", "beyond it"])
    documented = {
        markdown.unquote(flag)[0]: markdown.unquote(default)[0] for flag, default, _ in rows
    }
    flags = {
        action.option_strings[0]: action.default
        for action in router_parser()._actions
        if action.option_strings
        and _LIMIT_NAME.search(action.option_strings[0].removeprefix("--").replace("-", "_"))
    }
    assert len(flags) >= 10
    assert sorted(set(flags) - set(documented)) == [], "router flags missing from operations.md"
    for flag, default in flags.items():
        assert float(documented[flag]) == float(default), f"operations.md: {flag} default"
