"""The images a real node needs: the pod sandbox (our static `pause`), a Debian base, and
CoreDNS for cluster DNS (its static binary from the toolchain cache, alone in the image).

The base root filesystem comes from `debootstrap` (Debian's packages, minbase variant plus
busybox for small servers and clients in tests), added as one layer with umoci. Both are
keyed by their inputs, so the first cluster pays for them and every later one imports the
cached archive.
"""

from __future__ import annotations

import os
from pathlib import Path

from e2e.localcluster.toolchain import COREDNS

from .oci import Image, assemble, build_cached, files_key, require, run

PAUSE_SOURCE = Path(__file__).resolve().parent / "pause"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("busybox", "ca-certificates")


def pause() -> Image:
    sources = [PAUSE_SOURCE / "go.mod", PAUSE_SOURCE / "main.go"]
    return build_cached(Image("pause", files_key(sources)), _build_pause)


def _build_pause(image: Image, work: Path) -> None:
    require("go")
    binary = work / "pause"
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
    run(
        "go",
        "build",
        "-trimpath",
        "-ldflags=-s -w",
        "-o",
        str(binary),
        ".",
        cwd=PAUSE_SOURCE,
        env=env,
    )
    assemble(image, [(binary, "/pause")], ["--config.entrypoint=/pause"], work)


def base() -> Image:
    recipe = f"{SUITE} minbase {','.join(BASE_PACKAGES)} {MIRROR}"
    return build_cached(Image("base", files_key([Path(__file__)], recipe)), _build_base)


def _build_base(image: Image, work: Path) -> None:
    require("debootstrap")
    rootfs = work / "rootfs"
    run(
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        SUITE,
        str(rootfs),
        MIRROR,
    )
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        run("find", str(rootfs / cache), "-type", "f", "-delete")
    assemble(
        image,
        [(rootfs, "/")],
        [
            "--config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--config.cmd=/bin/sh",
        ],
        work,
    )


def coredns() -> Image:
    key = files_key([Path(__file__)], COREDNS.version, COREDNS.recipe)
    return build_cached(Image("coredns", key), _build_coredns)


def _build_coredns(image: Image, work: Path) -> None:
    COREDNS.build()
    binary = COREDNS.path("coredns")
    assemble(image, [(binary, "/coredns")], ["--config.entrypoint=/coredns"], work)
