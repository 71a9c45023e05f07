"""OCI images without a registry or a daemon: umoci writes an OCI layout, tar makes it the
archive that `ctr images import` reads.

Each image is cached as `<cache>/images/<name>-<key>.tar`, where the key hashes everything
that goes into it; an unchanged input never rebuilds, a changed one gets a new tag, so a
node never runs a stale image under an old name.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from e2e.localcluster.toolchain import CACHE_ROOT

IMAGES_CACHE = CACHE_ROOT / "images"
REGISTRY = "marfleet.local"


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Image:
    name: str
    key: str

    @property
    def ref(self) -> str:
        return f"{REGISTRY}/{self.name}:{self.key}"

    @property
    def archive(self) -> Path:
        return IMAGES_CACHE / f"{self.name}-{self.key}.tar"


def input_key(parts: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def files_key(paths: Sequence[Path], *extra: str) -> str:
    return input_key([*(p.read_bytes() for p in sorted(paths)), *(e.encode() for e in extra)])


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise ImageError(
            f"building node images needs {', '.join(missing)}: run `make setup NODE=real` "
            "(installs Debian's umoci, debootstrap and containerd)"
        )


def run(*command: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"`{' '.join(command)}` failed:\n{result.stderr.strip()[-4000:]}")


def assemble(
    image: Image, layers: Sequence[tuple[Path, str]], config: Sequence[str], work: Path
) -> None:
    """An image of the given (source, path in image) layers plus `umoci config` flags."""
    require("umoci")
    layout = work / "layout"
    run("umoci", "init", "--layout", str(layout))
    target = f"{layout}:{image.key}"
    run("umoci", "new", "--image", target)
    for source, destination in layers:
        run("umoci", "insert", "--image", target, str(source), destination)
    run("umoci", "config", "--image", target, "--config.user=0:0", *config)
    write_archive(image, layout)


def write_archive(image: Image, layout: Path) -> None:
    """The OCI layout (its one tag being `image.key`) as the image's archive, put in place whole."""
    IMAGES_CACHE.mkdir(parents=True, exist_ok=True)
    partial = image.archive.with_suffix(".partial")
    with tarfile.open(partial, "w") as archive:
        for item in sorted(layout.iterdir()):
            archive.add(item, arcname=item.name)
    partial.replace(image.archive)


Builder = Callable[[Image, Path], None]


def build_cached(image: Image, build: Builder) -> Image:
    if image.archive.exists():
        return image
    with tempfile.TemporaryDirectory(prefix=f"marfleet-image-{image.name}-") as work:
        build(image, Path(work))
    return image


def import_into(image: Image, containerd_socket: Path) -> None:
    """Load the archive into containerd's k8s.io namespace, where the kubelet looks."""
    require("ctr")
    run(
        "ctr",
        "--address",
        str(containerd_socket),
        "--namespace",
        "k8s.io",
        "images",
        "import",
        "--base-name",
        f"{REGISTRY}/{image.name}",
        str(image.archive),
    )
