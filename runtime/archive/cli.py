"""`marfleet archive`: torch-model-archiver 0.12's command line, flag for flag.

Scripts and CI jobs that call `torch-model-archiver` keep working when the command name is
swapped; the parsing lives here and the packing in `writer`, so other code can pack archives
without going through argv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from marfleet.runtime.archive.errors import ArchiveError
from marfleet.runtime.archive.writer import RUNTIMES, ArchiveFormat, ArchiveSpec, write_archive


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marfleet archive",
        description="Pack a model into a TorchServe model archive (.mar), "
        "with the flags of torch-model-archiver.",
    )
    parser.add_argument("--model-name", required=True, help="model name; the output is <name>.mar")
    parser.add_argument("-v", "--version", required=True, help="model version")
    parser.add_argument(
        "--serialized-file",
        type=Path,
        help="TorchScript module (.pt), or the state dict of an eager model (with --model-file)",
    )
    parser.add_argument(
        "--model-file", type=Path, help="Python file defining the eager model's one nn.Module class"
    )
    parser.add_argument(
        "--handler",
        required=True,
        help="a built-in handler name (image_classifier, ...) or path/to/handler.py[:function]",
    )
    parser.add_argument(
        "--extra-files",
        help="comma-separated files, directories (copied by their contents) or glob patterns",
    )
    parser.add_argument("--runtime", default="python", choices=RUNTIMES)
    parser.add_argument(
        "--export-path",
        type=Path,
        default=Path.cwd(),
        help="directory to write the archive to (default: the current directory)",
    )
    parser.add_argument(
        "--archive-format",
        default=ArchiveFormat.DEFAULT.value,
        choices=[fmt.value for fmt in ArchiveFormat],
        help="default: <name>.mar (zip); zip-store: uncompressed .mar; tgz: <name>.tar.gz; "
        "no-archive: the folder <export-path>/<name>",
    )
    parser.add_argument(
        "-f", "--force", action="store_true", help="overwrite an existing archive of the same name"
    )
    parser.add_argument("-r", "--requirements-file", type=Path, help="pip requirements file")
    parser.add_argument(
        "-c", "--config-file", type=Path, help="model-config.yaml (batch size, workers, ...)"
    )
    return parser


def spec_from_args(args: argparse.Namespace) -> ArchiveSpec:
    extra = tuple(item for item in (args.extra_files or "").split(",") if item.strip())
    return ArchiveSpec(
        model_name=args.model_name,
        version=args.version,
        handler=args.handler,
        serialized_file=args.serialized_file,
        model_file=args.model_file,
        extra_files=extra,
        requirements_file=args.requirements_file,
        config_file=args.config_file,
        runtime=args.runtime,
    )


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        output = write_archive(
            spec_from_args(args),
            args.export_path,
            ArchiveFormat(args.archive_format),
            force=args.force,
            progress_stream=sys.stderr,
        )
    except ArchiveError as error:
        print(f"marfleet archive: error: {error}", file=sys.stderr)
        return 1
    print(output)
    return 0
