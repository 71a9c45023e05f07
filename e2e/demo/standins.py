"""Starting a `LocalPod` on this machine: its volumes, its init containers, then its containers.

Init containers run to completion one after another, as the kubelet runs them; a failure stops
the pod with the container's log in the error. Containers are started through the
`ProcessBook`, each with the machine's environment (the virtualenv, PATH), the container's own
environment on top, and the caller's overrides last: those stand for what a node gives a pod
that a shared machine cannot (its own network namespace, hence its own ports; credentials).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .console import DemoError
from .localpods import LocalContainer, LocalPod
from .processes import Entry, ProcessBook

THREADS_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
"""As the runtime image sets them: one intra-op thread per worker process."""


def prepare(pod: LocalPod) -> None:
    for directory in pod.directories:
        directory.mkdir(parents=True, exist_ok=True)
    for path, text in pod.volume_files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def environment(container: LocalContainer, overrides: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, **THREADS_ENV, **container.env, **overrides}


def run_init_containers(pod: LocalPod, logs: Path, timeout: float = 120) -> None:
    for container in pod.init_containers:
        log = logs / f"{pod.name}.{container.name}.log"
        with log.open("wb") as output:
            result = subprocess.run(
                list(container.argv),
                env=environment(container, {}),
                cwd=container.workdir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        if result.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
            raise DemoError(
                f"init container {container.name} of {pod.name} exited {result.returncode}:\n{tail}"
            )


def start(
    book: ProcessBook,
    pod: LocalPod,
    container_name: str,
    logs: Path,
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Entry:
    container = pod.container(container_name)
    return book.start(
        f"{pod.name}/{container.name}",
        [*container.argv, *extra_args],
        env=environment(container, env or {}),
        log=logs / f"{pod.name}.{container.name}.log",
        cwd=container.workdir,
    )
