"""A pod that the simulated cluster only pretends to run, turned into commands for this machine.

KWOK marks pods Running and Ready without running anything, so the demo takes a Pod the
scheduler placed (its spec came from a Deployment the operator or the chart rendered) and
runs its containers here: the same command and arguments, the same environment (literal values
and the pod's own namespace, name and node), each volume as a local directory (an emptyDir
empty, a configMap holding its keys as files), with mount paths rewritten in the arguments.
What a node would provide on top (a network namespace of its own, credentials) the caller adds
as extra arguments and environment. Pure: objects in, commands out; nothing is started here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_ENTRYPOINT = "marfleet"
"""What a container without `command` runs: the entrypoint of every marfleet image."""

FIELD_PATHS = {
    "metadata.namespace": ("metadata", "namespace"),
    "metadata.name": ("metadata", "name"),
    "spec.nodeName": ("spec", "nodeName"),
}


class LocalPodError(ValueError):
    """The pod needs something a local process cannot be given; the message says what."""


@dataclass(frozen=True)
class LocalContainer:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    workdir: Path
    """The container's workingDir when it is on a volume, else a directory of its own."""


@dataclass(frozen=True)
class LocalPod:
    name: str
    namespace: str
    node: str
    service_account: str
    """The ServiceAccount whose token the pod is given; empty when it gets none."""
    init_containers: tuple[LocalContainer, ...]
    containers: tuple[LocalContainer, ...]
    volume_files: Mapping[Path, str] = field(default_factory=dict)
    """Files to write before anything starts (configMap keys), by local path."""
    directories: tuple[Path, ...] = ()
    """Directories to create before anything starts (volumes and working directories)."""

    def container(self, name: str) -> LocalContainer:
        for container in self.containers:
            if container.name == name:
                return container
        raise LocalPodError(f"pod {self.name} has no container {name!r}")


def local_pod(
    pod: Mapping[str, Any],
    config_maps: Mapping[str, Mapping[str, str]],
    root: Path,
    marfleet: Path,
) -> LocalPod:
    """The commands that run `pod` here, with its volumes under `root`.

    `config_maps` holds the data of the ConfigMaps the pod mounts, by name; `marfleet` is the
    executable that stands in for the image's `marfleet`.
    """
    spec = pod["spec"]
    volume_dirs: dict[str, Path] = {}
    files: dict[Path, str] = {}
    unsupported: set[str] = set()
    for volume in spec.get("volumes") or []:
        local = root / "volumes" / volume["name"]
        if "emptyDir" in volume:
            volume_dirs[volume["name"]] = local
        elif "configMap" in volume:
            name = volume["configMap"]["name"]
            if name not in config_maps:
                raise LocalPodError(
                    f"pod {pod['metadata']['name']} mounts ConfigMap {name}, not given"
                )
            volume_dirs[volume["name"]] = local
            files.update({local / key: text for key, text in config_maps[name].items()})
        else:
            unsupported.add(volume["name"])

    def containers(kind: str) -> tuple[LocalContainer, ...]:
        return tuple(
            _container(pod, c, volume_dirs, unsupported, root / "work" / c["name"], marfleet)
            for c in spec.get(kind) or []
        )

    init, main = containers("initContainers"), containers("containers")
    workdirs = tuple(c.workdir for c in (*init, *main))
    return LocalPod(
        name=pod["metadata"]["name"],
        namespace=pod["metadata"]["namespace"],
        node=spec.get("nodeName", ""),
        service_account=(
            spec.get("serviceAccountName") or "default"
            if spec.get("automountServiceAccountToken", True)
            else ""
        ),
        init_containers=init,
        containers=main,
        volume_files=files,
        directories=(*sorted(set(volume_dirs.values())), *workdirs),
    )


def _container(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    volume_dirs: Mapping[str, Path],
    unsupported: set[str],
    workdir: Path,
    marfleet: Path,
) -> LocalContainer:
    where = f"pod {pod['metadata']['name']} container {container['name']}"
    command = list(container.get("command") or [IMAGE_ENTRYPOINT])
    if command[0] != IMAGE_ENTRYPOINT:
        raise LocalPodError(f"{where} runs {command[0]!r}; only marfleet commands run locally")
    mounts: dict[str, Path] = {}
    blocked: list[str] = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] in volume_dirs:
            mounts[mount["mountPath"]] = volume_dirs[mount["name"]]
        elif mount["name"] in unsupported:
            blocked.append(mount["mountPath"])
    args = [_rewrite(arg, mounts, blocked, where) for arg in container.get("args") or []]
    env = {item["name"]: _env_value(pod, item, where) for item in container.get("env") or []}
    working_dir = container.get("workingDir", "")
    if working_dir:
        local = Path(_rewrite(working_dir, mounts, blocked, where))
        workdir = local if local != Path(working_dir) else workdir
    return LocalContainer(container["name"], (str(marfleet), *command[1:], *args), env, workdir)


def _rewrite(arg: str, mounts: Mapping[str, Path], blocked: Sequence[str], where: str) -> str:
    """`arg` with a mount path at its start replaced by the volume's local directory."""
    for path in sorted(mounts, key=len, reverse=True):
        if arg == path or arg.startswith(path.rstrip("/") + "/"):
            return str(mounts[path]) + arg[len(path) :]
    for path in blocked:
        if arg == path or arg.startswith(path.rstrip("/") + "/"):
            raise LocalPodError(f"{where}: argument {arg!r} is on a volume that cannot run here")
    return arg


def _env_value(pod: Mapping[str, Any], item: Mapping[str, Any], where: str) -> str:
    if "valueFrom" not in item:
        return str(item.get("value", ""))
    field_ref = (item.get("valueFrom") or {}).get("fieldRef") or {}
    path = FIELD_PATHS.get(field_ref.get("fieldPath", ""))
    if path is None:
        raise LocalPodError(f"{where}: env {item['name']} comes from {item.get('valueFrom')}")
    section, key = path
    return str(pod[section].get(key, ""))
