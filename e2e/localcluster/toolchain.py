"""Where the local control plane's binaries come from.

The Go modules under e2e/toolchain/ are the only place the Kubernetes and KWOK versions are
written; this module reads them from there, so the cache directory is keyed by exactly the
version that would be built. Binaries are built once into a cache outside the clone and
reused by every clone and every cluster on the machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TOOLCHAIN_DIR = Path(__file__).resolve().parent.parent / "toolchain"
CACHE_ROOT = Path(os.environ.get("MARFLEET_CACHE", Path.home() / ".cache" / "marfleet"))


@dataclass(frozen=True)
class GoTool:
    """A set of commands built from one pinned Go module of ours."""

    module_dir: Path
    pinned_module: str
    packages: tuple[str, ...]
    cache_prefix: str
    # Go variables that carry the release version (set with -X so `version` reports it).
    version_vars: tuple[str, ...] = ()
    # Without cgo: a self-contained binary that can be the only file in an image.
    static: bool = False
    # Go files of ours in module_dir that are compiled in (a main package): part of the recipe.
    sources: tuple[str, ...] = ()

    @property
    def version(self) -> str:
        text = (self.module_dir / "go.mod").read_text()
        match = re.search(
            rf"^\s*(?:require\s+)?{re.escape(self.pinned_module)}\s+(v\S+)", text, re.M
        )
        if not match:
            raise RuntimeError(f"{self.module_dir}/go.mod does not pin {self.pinned_module}")
        return match.group(1)

    @property
    def bin_dir(self) -> Path:
        return CACHE_ROOT / f"{self.cache_prefix}-{self.version}"

    def path(self, command: str) -> Path:
        return self.bin_dir / command

    def ldflags(self) -> str:
        version = self.version
        major, minor = version.lstrip("v").split(".")[:2]
        values = {
            "gitVersion": version,
            "gitMajor": major,
            "gitMinor": minor,
            "gitTreeState": "clean",
        }
        flags = ["-s", "-w"]
        flags += [f"-X {var}={values[var.rsplit('.', 1)[1]]}" for var in self.version_vars]
        return " ".join(flags)

    @property
    def recipe(self) -> str:
        """Identifies how the binaries were built: a changed recipe rebuilds them."""
        recipe = f"{self.packages}{self.ldflags()}" + (" static" if self.static else "")
        recipe += "".join(
            hashlib.sha256((self.module_dir / name).read_bytes()).hexdigest()
            for name in self.sources
        )
        return hashlib.sha256(recipe.encode()).hexdigest()[:16]

    def missing(self) -> list[str]:
        commands = [p.rsplit("/", 1)[-1] for p in self.packages]
        stamp = self.bin_dir / ".recipe"
        if not stamp.exists() or stamp.read_text() != self.recipe:
            return commands
        return [c for c in commands if not self.path(c).exists()]

    def build(self) -> bool:
        """Build the commands that are not cached yet; return whether anything was built."""
        missing = self.missing()
        if not missing:
            return False
        if shutil.which("go") is None:
            raise RuntimeError("Go is needed to build the local control plane: install Go 1.24+")
        packages = [p for p in self.packages if p.rsplit("/", 1)[-1] in missing]
        staging = self.bin_dir.with_name(self.bin_dir.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOSUMDB": "off", "GOFLAGS": "-mod=mod -buildvcs=false"}
        if self.static:
            env["CGO_ENABLED"] = "0"
        started = time.monotonic()
        print(f"building {', '.join(missing)} {self.version} (once per version)", file=sys.stderr)
        subprocess.run(
            [
                "go",
                "build",
                "-trimpath",
                f"-ldflags={self.ldflags()}",
                "-o",
                str(staging),
                *packages,
            ],
            cwd=self.module_dir,
            env=env,
            check=True,
        )
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            item.replace(self.bin_dir / item.name)
        staging.rmdir()
        (self.bin_dir / ".recipe").write_text(self.recipe)
        print(f"built in {time.monotonic() - started:.0f}s into {self.bin_dir}", file=sys.stderr)
        return True


KUBERNETES = GoTool(
    module_dir=TOOLCHAIN_DIR / "controlplane",
    pinned_module="k8s.io/kubernetes",
    packages=(
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-scheduler",
        "k8s.io/kubernetes/cmd/kubectl",
    ),
    cache_prefix="k8s",
    version_vars=tuple(
        f"{package}.{var}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for var in ("gitVersion", "gitMajor", "gitMinor", "gitTreeState")
    ),
)
# The real node's kubelet and kube-proxy: the same pinned module as the control plane, kept
# apart so the KWOK-only setup never builds (or relinks) them.
KUBERNETES_NODE = GoTool(
    module_dir=KUBERNETES.module_dir,
    pinned_module=KUBERNETES.pinned_module,
    packages=("k8s.io/kubernetes/cmd/kubelet", "k8s.io/kubernetes/cmd/kube-proxy"),
    cache_prefix="k8s-node",
    version_vars=KUBERNETES.version_vars,
)
KWOK = GoTool(
    module_dir=TOOLCHAIN_DIR / "kwok",
    pinned_module="sigs.k8s.io/kwok",
    packages=("sigs.k8s.io/kwok/cmd/kwok",),
    cache_prefix="kwok",
)
HELM = GoTool(
    module_dir=TOOLCHAIN_DIR / "helm",
    pinned_module="helm.sh/helm/v4",
    packages=("helm.sh/helm/v4/cmd/helm",),
    cache_prefix="helm",
)
# Serves Prometheus series as the custom metrics API for the HPA in the end-to-end scenario;
# like the node binaries, only real-node setups build it.
PROMETHEUS_ADAPTER = GoTool(
    module_dir=TOOLCHAIN_DIR / "prometheus-adapter",
    pinned_module="sigs.k8s.io/prometheus-adapter",
    packages=("sigs.k8s.io/prometheus-adapter/cmd/adapter",),
    cache_prefix="prometheus-adapter",
)
# The real node's cluster DNS: CoreDNS with only the plugins its Corefile uses (main.go), so
# the cloud providers' SDKs of the full build are neither fetched nor compiled; static for
# an image that holds nothing else.
COREDNS = GoTool(
    module_dir=TOOLCHAIN_DIR / "coredns",
    pinned_module="github.com/coredns/coredns",
    packages=("marfleet.dev/e2e/coredns",),
    cache_prefix="coredns",
    static=True,
    sources=("main.go",),
)
# Object stores the storage tests fetch models from (tests/integration/test_fetch_objects.py):
# versitygw for S3 (Apache-2.0; its gateway checks SigV4 keys) and fake-gcs-server for the GCS
# JSON API (BSD-2). SeaweedFS (Apache-2.0) was measured first: its one `weed` command pulls
# ~500 modules and took 37 min to build cold here, versitygw 11 min (docs/operations.md).
VERSITYGW = GoTool(
    module_dir=TOOLCHAIN_DIR / "versitygw",
    pinned_module="github.com/versity/versitygw",
    packages=("github.com/versity/versitygw/cmd/versitygw",),
    cache_prefix="versitygw",
    static=True,
)
FAKE_GCS_SERVER = GoTool(
    module_dir=TOOLCHAIN_DIR / "fake-gcs-server",
    pinned_module="github.com/fsouza/fake-gcs-server",
    packages=("github.com/fsouza/fake-gcs-server",),
    cache_prefix="fake-gcs-server",
    static=True,
)
TOOLS = (KUBERNETES, KWOK, HELM)
# What `make toolchain` builds beside TOOLS for the storage tests (not needed by a cluster).
STORE_TOOLS = (VERSITYGW, FAKE_GCS_SERVER)
# What `make node-setup` builds on top of TOOLS.
NODE_TOOLS = (KUBERNETES_NODE, PROMETHEUS_ADAPTER, COREDNS)


def etcd_binary() -> Path:
    """Debian's etcd-server (3.4) works with the pinned apiserver; setup installs it."""
    found = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if not found:
        raise RuntimeError("etcd not found: run `make setup` (installs Debian's etcd-server)")
    return Path(found)


def require_built() -> None:
    missing = [f"{tool.bin_dir}/{cmd}" for tool in TOOLS for cmd in tool.missing()]
    if missing:
        raise RuntimeError(
            "the local control plane is not built: missing "
            + ", ".join(missing)
            + ". Run `make setup` (builds it once into the cache)."
        )
