"""Handler resolution with TorchServe's rules, on handler modules written into model folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from marfleet.runtime.handlers.context import Context
from marfleet.runtime.handlers.defaults.image_classifier import ImageClassifier
from marfleet.runtime.handlers.errors import ModelLoadError
from marfleet.runtime.handlers.loader import (
    EntryPoint,
    enter_model_dir,
    load_entry_point,
    split_handler,
)

CLASS_HANDLER = """
class EchoHandler:
    def initialize(self, context):
        self.name = context.model_name

    def handle(self, data, context):
        return [self.name for _ in data]
"""

FUNCTION_HANDLER = """
calls = []

def predict(data, context):
    calls.append(data)
    return None if data is None else ["fn" for _ in data]
"""


def context() -> Context:
    return Context("m", "/nowhere", {}, 1, None, "0")


def load(model_dir: Path, handler: str, files: dict[str, str]) -> EntryPoint:
    model_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / name).write_text(text)
    enter_model_dir(model_dir)
    return load_entry_point(handler)


def run(entry_point: EntryPoint) -> Any:
    ctx = context()
    entry_point.initialize(ctx)
    return entry_point.handle([{"body": b""}], ctx)


@pytest.mark.parametrize(
    ("handler", "parsed"),
    [
        ("handler", ("handler", None)),
        ("handler.py", ("handler", None)),
        ("src/pkg/handler.py:predict", ("handler", "predict")),
        ("handler:predict", ("handler", "predict")),
    ],
)
def test_split_handler(handler: str, parsed: tuple[str, str | None]) -> None:
    assert split_handler(handler) == parsed


@pytest.mark.parametrize("handler", ["echo_a", "echo_a.py", "some/dir/echo_a.py"])
def test_the_one_class_of_a_module_is_the_handler(tmp_path: Path, handler: str) -> None:
    entry_point = load(tmp_path / "m", handler, {"echo_a.py": CLASS_HANDLER})
    assert run(entry_point) == ["m"]
    assert entry_point.description == "echo_a.EchoHandler"


def test_module_function_is_initialised_with_none_then_called(tmp_path: Path) -> None:
    entry_point = load(tmp_path / "m", "fn_mod:predict", {"fn_mod.py": FUNCTION_HANDLER})
    ctx = context()
    entry_point.initialize(ctx)
    assert entry_point.handle([{"body": b""}, {"body": b""}], ctx) == ["fn", "fn"]
    import fn_mod

    assert fn_mod.calls[0] is None


def test_a_module_level_handle_function_wins_over_classes(tmp_path: Path) -> None:
    source = (
        CLASS_HANDLER + "\nclass Other: ...\n\ndef handle(data, context):\n    return ['module']\n"
    )
    entry_point = load(tmp_path / "m", "mixed", {"mixed.py": source})
    assert run(entry_point) == ["module"]


def test_an_imported_base_class_does_not_count(tmp_path: Path) -> None:
    source = (
        "from marfleet.runtime.handlers.defaults.base_handler import BaseHandler\n\n"
        "class Mine(BaseHandler):\n    pass\n"
    )
    entry_point = load(tmp_path / "m", "sub", {"sub.py": source})
    assert entry_point.description == "sub.Mine"


def test_two_classes_and_no_function_is_refused_with_the_names(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"exactly one class.*EchoHandler, Other"):
        load(tmp_path / "m", "two", {"two.py": CLASS_HANDLER + "\nclass Other: ...\n"})


def test_a_class_without_handle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"has no handle\(\) method"):
        load(
            tmp_path / "m",
            "nohandle",
            {"nohandle.py": "class H:\n    def initialize(self, c): ...\n"},
        )


def test_a_missing_function_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="has no function 'infer'"):
        load(tmp_path / "m", "fn_mod2:infer", {"fn_mod2.py": FUNCTION_HANDLER})


def test_builtin_names_resolve_to_the_builtin_handlers(tmp_path: Path) -> None:
    entry_point = load(tmp_path / "m", "image_classifier", {})
    assert isinstance(getattr(entry_point.handle, "__self__", None), ImageClassifier)


def test_a_model_file_named_like_a_builtin_shadows_it(tmp_path: Path) -> None:
    entry_point = load(tmp_path / "m", "image_classifier", {"image_classifier.py": CLASS_HANDLER})
    assert run(entry_point) == ["m"]


def test_an_unknown_handler_is_named_with_the_builtins(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no module 'nothing_here'.*image_classifier"):
        load(tmp_path / "m", "nothing_here", {})


def test_a_missing_dependency_of_the_handler_is_named(tmp_path: Path) -> None:
    files = {"needs_dep.py": "import not_installed_anywhere\n"}
    with pytest.raises(ModelLoadError, match="imports 'not_installed_anywhere'"):
        load(tmp_path / "m", "needs_dep", files)


def test_each_model_dir_gets_its_own_modules_of_the_same_name(tmp_path: Path) -> None:
    first = load(tmp_path / "a", "handler", {"handler.py": "def handle(d, c):\n    return ['a']\n"})
    second = load(
        tmp_path / "b", "handler", {"handler.py": "def handle(d, c):\n    return ['b']\n"}
    )
    assert (run(first), run(second)) == (["a"], ["b"])


def test_helper_modules_next_to_the_handler_are_importable(tmp_path: Path) -> None:
    files = {
        "helpers/__init__.py": "",
        "helpers/text.py": "def shout(s):\n    return s.upper()\n",
        "uses_helper.py": "from helpers.text import shout\n\nhandle = lambda d, c: [shout('x')]\n",
    }
    assert run(load(tmp_path / "m", "uses_helper", files)) == ["X"]
