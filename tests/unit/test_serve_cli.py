"""`marfleet serve`'s command line takes torchserve's: its actions, aliases and options."""

from __future__ import annotations

import pytest
from marfleet.runtime import serve_cli
from marfleet.runtime.server.app import server_version


def test_version_prints_and_exits(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"marfleet {server_version()}\n"
    assert serve_cli.main(["-v"]) == 0


def test_start_stop_and_version_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        serve_cli.build_parser().parse_args(["--start", "--stop"])
    assert exited.value.code == 2
    assert "not allowed with argument --start" in capsys.readouterr().err


def test_torchserve_aliases() -> None:
    args = serve_cli.build_parser().parse_args(
        ["--start", "--dt", "--no-config-snapshots", "--ppath", "jars", "--model-store", "s"]
    )
    assert args.start and args.disable_token_auth and args.no_config_snapshots
    assert args.plugins_path == "jars" and args.model_store == "s"
