"""The `marfleet` command.

Each subcommand lives in the module that owns it and exposes `main(argv) -> int`; this file
only maps names to those modules and imports the chosen one lazily, so `marfleet archive`
never pays for importing the operator or the HTTP server.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (module exposing main(argv) -> int, one-line summary)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "archive": (
        "marfleet.runtime.archive.cli",
        "pack a model archive (torch-model-archiver flags)",
    ),
    "fetch": ("marfleet.runtime.storage.cli", "fetch a model archive into a directory"),
    "serve": ("marfleet.runtime.serve_cli", "run the model server (TorchServe and KServe APIs)"),
    "operator": ("marfleet.operator.cli", "run the InferenceService operator"),
    "router": ("marfleet.runtime.router.cli", "split an InferenceService's traffic by weight"),
}


def usage() -> str:
    width = max((len(name) for name in SUBCOMMANDS), default=0)
    lines = ["usage: marfleet <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    lines += ["", "Run `marfleet <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"marfleet: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
