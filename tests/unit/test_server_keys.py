"""key_file.json holds the management token: only its owner may read it, always."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from marfleet.runtime.server.auth import Tokens


def test_the_key_file_is_0600_even_when_it_existed_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    path.write_text("{}")
    path.chmod(0o644)
    tokens = Tokens(path, lifetime_s=60)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["management"]["key"] == tokens.key("management")


def test_the_key_file_is_not_written_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("")
    (tmp_path / "key_file.json").symlink_to(target)
    with pytest.raises(OSError):
        Tokens(tmp_path / "key_file.json", lifetime_s=60)
    assert target.read_text() == ""
