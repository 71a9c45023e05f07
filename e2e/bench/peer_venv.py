"""The peers' own virtualenv (`.venv-peers`): KServe, Ray Serve and LitServe from PyPI, apart
from marfleet's dependencies.

torch (a multi-GB wheel) and torchvision are not installed a second time: a `.pth` file in the
peer venv runs `site.addsitedir()` on the main venv's site-packages, which appends it to
`sys.path` AFTER the peer venv's own — so the peers' pinned dependencies (FastAPI, uvicorn,
pydantic, ...) win, and what they do not bring (torch, torchvision, Pillow, and the repo for
`e2e.bench.peer_apps`) comes from the main venv. pip sees the main venv's packages as installed
and leaves them there. A stamp named after the pins skips the install when nothing changed.

    .venv/bin/python -m e2e.bench.peer_venv --venv .venv-peers   # prints the versions (JSON)

The tests compare marfleet's KServe protocols with KServe's own server
(`tests/integration/test_kserve_differential.py`) in a venv of KServe alone, kept outside the
clone by its pin like the other tools (`kserve_venv()`; `make test` creates it):

    .venv/bin/python -m e2e.bench.peer_venv --kserve-only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

KSERVE_PIN = "kserve==0.21.*"
PINS = (KSERVE_PIN, "ray[serve]==2.60.*", "litserve==0.2.19")
# distribution name of each server under test, for the versions the results record
DISTRIBUTIONS = {"kserve": "kserve", "ray": "ray", "litserve": "litserve"}


def python_of(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def _digest(pins: tuple[str, ...]) -> str:
    return hashlib.sha1(" ".join(pins).encode()).hexdigest()[:12]


def kserve_venv() -> Path:
    """Where the KServe-only venv lives: beside the other cached tools, named by its pin."""
    cache = Path(os.environ.get("MARFLEET_CACHE", Path.home() / ".cache" / "marfleet"))
    return cache / f"kserve-venv-{_digest((KSERVE_PIN,))}"


def ensure(venv_dir: Path, pins: tuple[str, ...] = PINS, share_main: bool = True) -> Path:
    """Create or update a peer venv with `pins`; its python. `share_main`: torch and the repo
    come from the main venv (the benchmark's peers); without it the venv stands alone."""
    python = python_of(venv_dir)
    stamp = venv_dir / f".pins-{_digest(pins)}"
    if stamp.exists():
        return python
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    if share_main:
        _share_main_venv(python)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins],
        check=True,
        cwd=venv_dir,  # not the repo: its operator/ folder would shadow the stdlib's operator
    )
    stamp.touch()
    return python


def _share_main_venv(python: Path) -> None:
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        cwd=python.parent,
        capture_output=True,
        text=True,
    ).stdout.strip()
    main_site = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "zz-marfleet-main-venv.pth").write_text(
        f"import site; site.addsitedir({main_site!r})\n"
    )


def versions(python: Path) -> dict[str, str]:
    """Each peer's installed version (and torch's, which they share), as the peer venv sees it."""
    names = {**DISTRIBUTIONS, "torch": "torch"}
    script = (
        "import json, sys\nfrom importlib import metadata\n"
        "found = {}\nfor key, dist in json.loads(sys.argv[1]).items():\n"
        "    try: found[key] = metadata.version(dist)\n"
        "    except metadata.PackageNotFoundError: found[key] = 'not installed'\n"
        "print(json.dumps(found))"
    )
    output = subprocess.run(
        [str(python), "-c", script, json.dumps(names)],
        check=True,
        capture_output=True,
        text=True,
        cwd=python.parent,
    ).stdout
    result: dict[str, str] = json.loads(output)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="peer_venv", description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path(".venv-peers"))
    parser.add_argument(
        "--kserve-only",
        action="store_true",
        help="the tests' KServe venv (kserve_venv(), outside the clone) instead of --venv",
    )
    args = parser.parse_args(argv)
    if args.kserve_only:
        python = ensure(kserve_venv(), (KSERVE_PIN,), share_main=False)
    else:
        python = ensure(args.venv)
    print(json.dumps(versions(python)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
