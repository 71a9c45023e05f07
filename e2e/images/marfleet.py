"""marfleet's runtime and operator images for the real node, built from Debian packages and
PyPI wheels without Docker or a registry.

PyTorch comes from Debian (trixie's python3-torch is the CPU build; PyPI's is the CUDA one and
PyTorch's own index is out of reach), so the images are Debian trixie with its Python 3.13.
Each layer is the output of one step, run as root in a chroot of an overlay over the layers
below it, so a layer holds exactly what its step wrote:

    python  debootstrap minbase + python3, jinja2, uvloop, ca-certificates    both images
    torch   apt-get install python3-torch, -torchvision, -numpy               runtime only
    deps    a venv at /opt/marfleet/venv (seeing Debian's packages) with the
            PyPI wheels of pyproject's dependencies Debian lacks or has too old  both
    code    marfleet's own wheel and its `marfleet` command in that venv      both

Every step's output is cached under `<cache>/images/stages/` by a key of its inputs: the file
trees later steps chroot into, and OCI layouts whose compressed blobs the next layout reuses by
hard link before `umoci insert` adds its layer. A change to operator/ or runtime/ therefore
builds one wheel, installs it, and compresses only the small code layer.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pip

from .node import MIRROR
from .oci import (
    IMAGES_CACHE,
    Image,
    ImageError,
    build_cached,
    files_key,
    input_key,
    require,
    run,
    write_archive,
)

REPO = Path(__file__).resolve().parents[2]
STAGES = IMAGES_CACHE / "stages"
SUITE = "trixie"
PYTHON_PACKAGES = ("python3", "python3-jinja2", "python3-uvloop", "ca-certificates")
TORCH_PACKAGES = ("python3-torch", "python3-torchvision", "python3-numpy")
# pyproject dependencies that the torch layer provides; pip must never fetch them (or CUDA).
FROM_DEBIAN = ("torch", "torchvision", "numpy")
FORBIDDEN_WHEELS = ("torch", "torchvision", "numpy", "nvidia")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
APP = "/opt/marfleet"
VENV = f"{APP}/venv"
TAG = "stage"
# Docs, manuals and translations are left out of every package, as slim images do.
DPKG_SLIM = """\
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
"""
SLIM_DIRS = ("usr/share/man", "usr/share/info", "usr/share/locale")
APT_LEFTOVERS = ("var/cache/apt", "var/lib/apt/lists", "var/log/apt", "var/log/dpkg.log")
CHROOT_PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMMON_ENV = (f"PATH={CHROOT_PATH}", "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1")
# charts/marfleet/images/runtime.Dockerfile and operator.Dockerfile, in umoci's words.
RUNTIME_CONFIG = (
    *(f"--config.env={env}" for env in (*COMMON_ENV, "OMP_NUM_THREADS=1", "HOME=/tmp")),
    "--config.user=1000:1000",
    *(f"--config.exposedports={port}/tcp" for port in (8080, 8081, 8082)),
    "--config.entrypoint=marfleet",
    *(f"--config.cmd={arg}" for arg in ("serve", "--foreground", "--model-store", "/mnt/models")),
)
OPERATOR_CONFIG = (
    *(f"--config.env={env}" for env in COMMON_ENV),
    "--config.user=65532:65532",
    "--config.exposedports=8080/tcp",
    "--config.entrypoint=marfleet",
    "--config.cmd=operator",
)


def runtime() -> Image:
    """`marfleet serve` and the rest of the CLI, with Debian's CPU PyTorch."""
    base = _layout(
        "runtime-base",
        [_torch_layout(), _deps_tree()],
        lambda out: _extend(_torch_layout(), out, [(_deps_tree() / APP.lstrip("/"), APP)]),
    )
    return _image("runtime", base, RUNTIME_CONFIG)


def operator() -> Image:
    """`marfleet operator` and `marfleet router`: the runtime image less PyTorch."""
    base = _layout(
        "operator-base",
        [_python_layout(), _deps_tree()],
        lambda out: _extend(_python_layout(), out, [(_deps_tree() / APP.lstrip("/"), APP)]),
    )
    return _image("operator", base, OPERATOR_CONFIG)


def _image(name: str, base: Path, config: Sequence[str]) -> Image:
    code = _code_tree()
    image = Image(name, input_key([base.name.encode(), code.name.encode()]))

    def build(image: Image, work: Path) -> None:
        layout = work / "layout"
        _copy_layout(base, layout)
        target = f"{layout}:{image.key}"
        run("umoci", "insert", "--image", f"{layout}:{TAG}", "--tag", image.key,
            str(code / APP.lstrip("/")), APP)  # fmt: skip
        run("umoci", "rm", "--image", f"{layout}:{TAG}")
        run("umoci", "config", "--image", target, *config)
        run("umoci", "gc", "--layout", str(layout))
        write_archive(image, layout)

    built = build_cached(image, build)
    _prune(IMAGES_CACHE, f"{name}-*.tar")
    return built


# --- the python layer: debootstrap ---------------------------------------------------------


def _python_key() -> str:
    recipe = f"{SUITE} minbase {','.join(PYTHON_PACKAGES)} {MIRROR} {DPKG_SLIM}"
    return files_key([Path(__file__)], recipe)


def _python_tree() -> Path:
    return _cached(STAGES / f"python-tree-{_python_key()}", _debootstrap)


def _debootstrap(tree: Path) -> None:
    require("debootstrap")
    run("debootstrap", "--variant=minbase", f"--include={','.join(PYTHON_PACKAGES)}", SUITE,
        str(tree), MIRROR)  # fmt: skip
    for doc in (tree / "usr/share/doc").glob("*/*"):
        if doc.name != "copyright":
            _remove(doc)
    _remove_all(tree, (*SLIM_DIRS, *APT_LEFTOVERS))
    (tree / "etc/dpkg/dpkg.cfg.d/marfleet-slim").write_text(DPKG_SLIM)
    # the kubelet mounts the pod's own; the build machine's resolver stays out of the image
    (tree / "etc/resolv.conf").write_text("")


def _python_layout() -> Path:
    tree = _python_tree()

    def build(layout: Path) -> None:
        run("umoci", "init", "--layout", str(layout))
        run("umoci", "new", "--image", f"{layout}:{TAG}")
        run("umoci", "insert", "--image", f"{layout}:{TAG}", str(tree), "/")

    return _layout("python-layout", [tree], build)


# --- the torch layer: apt-get in a chroot ----------------------------------------------------


def _torch_layout() -> Path:
    python = _python_tree()

    def build(layout: Path) -> None:
        upper = layout.parent / "upper"
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *TORCH_PACKAGES]
        _chroot([python], upper, [["apt-get", "update", "-q"], install], layout.parent)
        _remove_all(upper, APT_LEFTOVERS)
        _extend(_python_layout(), layout, [(upper, "/")])

    return _layout("torch-layout", [_python_layout(), " ".join(TORCH_PACKAGES)], build)


# --- the deps layer: PyPI wheels into a venv -------------------------------------------------


def _requirements() -> list[str]:
    """pyproject's dependencies with its `runtime` and `operator` extras (both images share
    this layer), less those the torch layer installs from Debian."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    dependencies: list[str] = [*project["dependencies"], *extras["runtime"], *extras["operator"]]
    return [dep for dep in dependencies if _requirement_name(dep) not in FROM_DEBIAN]


def _deps_tree() -> Path:
    python = _python_tree()
    requirements = _requirements()

    def build(tree: Path) -> None:
        inputs = tree.parent / "in"
        version = os.readlink(python / "usr/bin/python3").removeprefix("python")
        abi = "cp" + version.replace(".", "")
        run(sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
            "--python-version", version, "--implementation", "cp",
            *(f"--abi={tag}" for tag in (abi, "abi3", "none")),
            *(f"--platform={platform}" for platform in PLATFORMS),
            "--dest", str(inputs / "wheels"), *requirements)  # fmt: skip
        fetched = [
            wheel.name
            for wheel in (inputs / "wheels").iterdir()
            if _installed_name(wheel.name).startswith(FORBIDDEN_WHEELS)
        ]
        if fetched:
            raise ImageError(f"pip fetched {fetched}; PyTorch and numpy must come from Debian")
        venv = ["python3", "-m", "venv", "--system-site-packages", "--without-pip", VENV]
        install = [*_pip_install(inputs), "--find-links", "/tmp/in/wheels", *requirements]
        _chroot([python], tree, [venv, install], tree.parent)
        _expect_only(tree, VENV)
        shadowed = _dists(tree / VENV.lstrip("/")) & _dists(python)
        if shadowed:
            raise ImageError(
                f"the venv replaces Debian's {sorted(shadowed)} (too old for a dependency): "
                "take them out of PYTHON_PACKAGES so that one copy is installed"
            )

    key = input_key([_python_key().encode(), *(r.encode() for r in requirements)])
    return _cached(STAGES / f"deps-tree-{key}", build)


# --- the code layer: marfleet's wheel ------------------------------------------------------


def _sources() -> list[Path]:
    """What marfleet's wheel is built from (the package data included)."""
    files = [REPO / name for name in ("pyproject.toml", "setup.py", "README.md")]
    for folder in ("operator", "runtime"):
        files += [
            path
            for path in (REPO / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        ]
    return sorted(files)


def _code_tree() -> Path:
    deps = _deps_tree()
    sources = _sources()

    def build(tree: Path) -> None:
        source, inputs = tree.parent / "src", tree.parent / "in"
        for path in sources:
            copy = source / path.relative_to(REPO)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
            "--wheel-dir", str(inputs / "wheel"), str(source))  # fmt: skip
        (wheel,) = (inputs / "wheel").glob("*.whl")
        install = [*_pip_install(inputs), "--no-deps", f"/tmp/in/wheel/{wheel.name}"]
        _chroot([deps, _python_tree()], tree, [install], tree.parent)
        _expect_only(tree, VENV)

    names = [str(path.relative_to(REPO)) for path in sources]
    key = input_key([deps.name.encode(), files_key(sources, *names).encode()])
    return _cached(STAGES / f"code-tree-{key}", build)


def _pip_install(inputs: Path) -> list[str]:
    """`pip install` for the venv in the chroot, offline, run by a copy of this interpreter's
    own pip (pure Python) put in `inputs` (the chroot's /tmp/in), so the images carry none."""
    shutil.copytree(Path(pip.__file__).parent, inputs / "tools/pip", dirs_exist_ok=True)
    return ["env", "PYTHONPATH=/tmp/in/tools", f"{VENV}/bin/python", "-m", "pip", "install",
            "--no-index", "--no-cache-dir", "--disable-pip-version-check"]  # fmt: skip


# --- chroot, overlay and cache plumbing ----------------------------------------------------


def _chroot(
    lowers: Sequence[Path], upper: Path, commands: Sequence[Sequence[str]], scratch: Path
) -> None:
    """`commands` one after another as root in a chroot of the overlay `upper` over `lowers`
    (top first), in a private mount namespace: nothing is mounted on the host, and all of it
    goes when the commands end. The chroot's /tmp is a tmpfs holding `scratch/in` at /tmp/in;
    the build machine's resolver is bound over the (empty) /etc/resolv.conf for apt."""
    if os.geteuid() != 0:
        raise ImageError("building marfleet's images needs root (overlay mounts and chroot)")
    require("unshare", "chroot")
    merged, work, inputs = scratch / "merged", scratch / "overlay-work", scratch / "in"
    for folder in (upper, merged, work, inputs):
        folder.mkdir(parents=True, exist_ok=True)
    script = """
        lower=$1 upper=$2 work=$3 root=$4 in=$5; shift 5
        mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
        mount -t proc proc "$root/proc"
        mount -t tmpfs tmpfs "$root/tmp"
        mkdir "$root/tmp/in" && mount --bind "$in" "$root/tmp/in"
        mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
        exec chroot "$root" /usr/bin/env -i "PATH=$PATH_IN" HOME=/root LC_ALL=C.UTF-8 \\
            DEBIAN_FRONTEND=noninteractive sh -euc "$1"
    """
    steps = " && ".join(shlex.join(command) for command in commands)
    lower = ":".join(str(path) for path in lowers)
    run("unshare", "--mount", "--propagation", "private", "sh", "-euc", script, "sh", lower,
        str(upper), str(work), str(merged), str(inputs), steps,
        env={**os.environ, "PATH_IN": CHROOT_PATH})  # fmt: skip
    _check_upper(upper, lowers)


def _check_upper(upper: Path, lowers: Sequence[Path]) -> None:
    """A layer may add and change files but never delete one: an overlay whiteout (a 0:0
    character device) or a replaced directory would need an OCI whiteout entry, which
    `umoci insert` of a folder cannot write."""
    deleted = []
    for folder, dirs, files in os.walk(upper):
        for name in dirs + files:
            path = Path(folder, name)
            relative = path.relative_to(upper)
            info = path.lstat()
            if (info.st_mode & 0o170000) == 0o020000 and info.st_rdev == 0:
                deleted.append(str(relative))
            elif (
                name in dirs
                and "trusted.overlay.opaque" in os.listxattr(path, follow_symlinks=False)
                and any(os.path.lexists(lower / relative) for lower in lowers)
            ):
                deleted.append(f"{relative}/*")
    if deleted:
        raise ImageError(
            f"a build step deleted files of a lower layer ({', '.join(deleted[:10])}); "
            f"remove {STAGES} to rebuild every layer against today's Debian"
        )


def _expect_only(tree: Path, folder: str) -> None:
    """A chroot step that should have written only below `folder` did."""
    inside = tree / folder.lstrip("/")
    stray = [
        str(path.relative_to(tree))
        for path in tree.rglob("*")
        if path != inside and inside not in path.parents and path not in inside.parents
    ]
    if stray:
        raise ImageError(f"a build step wrote outside {folder}: {stray[:10]}")


def _dists(root: Path) -> set[str]:
    """Normalised names of the Python distributions installed under `root`."""
    return {_installed_name(info.name) for info in root.glob("**/*-packages/*.*-info")}


def _installed_name(filename: str) -> str:
    """The project of a wheel, .dist-info or .egg-info name (`name-version...`)."""
    return _normalise(re.split(r"-|\.(?:dist|egg)-info$", filename)[0])


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    return _normalise(match.group(0) if match else requirement)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _layout(name: str, inputs: Sequence[Path | str], build: Callable[[Path], None]) -> Path:
    parts = [item.name if isinstance(item, Path) else item for item in inputs]
    return _cached(STAGES / f"{name}-{input_key(p.encode() for p in parts)}", build)


def _extend(parent: Path, layout: Path, layers: Sequence[tuple[Path, str]]) -> None:
    """A copy of the layout `parent` (blobs hard-linked) with `layers` added to its image."""
    _copy_layout(parent, layout)
    for source, destination in layers:
        run("umoci", "insert", "--image", f"{layout}:{TAG}", str(source), destination)


def _copy_layout(source: Path, target: Path) -> None:
    """Blobs are content-addressed and never rewritten, so the copy links them where it can."""
    (target / "blobs/sha256").mkdir(parents=True)
    for blob in (source / "blobs/sha256").iterdir():
        try:
            os.link(blob, target / "blobs/sha256" / blob.name)
        except OSError:
            shutil.copy2(blob, target / "blobs/sha256" / blob.name)
    for name in ("index.json", "oci-layout"):
        shutil.copy2(source / name, target / name)


def _cached(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, made once by `build(out)` and renamed into place; `out` does not exist yet and
    its parent is a private scratch folder (on the same file system) for the build's leftovers."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(scratch / "out")
        try:
            (scratch / "out").rename(target)
        except OSError:
            if not target.exists():  # else a build running beside this one finished first
                raise
    finally:
        _remove(scratch)
    _prune(target.parent, target.name.rsplit("-", 1)[0] + "-*")
    return target


def _prune(folder: Path, pattern: str, keep: int = 2) -> None:
    """Only the newest `keep` of a stage or image: a code change must not pile up gigabytes."""
    entries = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_all(tree: Path, paths: Iterable[str]) -> None:
    for relative in paths:
        target = tree / relative
        if target.is_dir() and not target.is_symlink():
            for child in target.iterdir():
                _remove(child)
        else:
            _remove(target)
