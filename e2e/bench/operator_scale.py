"""`make bench-operator`: the operator at fleet scale, on the local control plane's scale profile.

For each N (default 100, 300 and 1,000) and each operator build given (e.g. the code before and
after a change, side by side in one run), in a fresh namespace (or `--namespaces K` of them,
the InferenceServices dealt out in turn, as teams would have them):

1. start `marfleet operator` (leader election on, watching those namespaces only);
2. server-side apply N InferenceServices at once (8 concurrent applies as kubectl's field
   manager): one in three (`--multi-every`) has two variants at 90/10 (with a router), the
   rest one; every other one HPA-scaled, the others a fixed replica (`engine: none`); CPU only;
3. follow them with a watch until every one reports Ready for its current generation:
   apply seconds, apply->Ready (from the start of the apply) and created->Ready (from each
   one's own create) p50/p99, the operator's CPU seconds, writes and reconciliations (its
   /metrics) per InferenceService, and its peak RSS;
4. change the weights of every two-variant one at once (90/10 -> 50/50, the same concurrent
   apply) and time each edit, from the API server's answer to it, until the weights in force
   (`status.variants[].weight`, what the routers follow) are the new ones;
5. restart the operator with all N converged: seconds until it leads and has reconciled every
   InferenceService once, and the writes it made doing so (should be none);
6. count error lines in the operator's log, stop it, delete the namespaces and wait until
   they are gone.

Everything goes to one JSON file (--out) and a Markdown table on stdout. With --profile-dir the
operator of each run is started under py-spy (sampling, raw format) and the top functions by
own and by total time are written beside the JSON; profiled runs are not timed fairly, so keep
them to separate invocations.

    .venv/bin/python -m e2e.bench.operator_scale --nodes 50 --counts 100 300 1000 \\
        --operator before=/path/to/old/.venv/bin/marfleet --operator after=.venv/bin/marfleet
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from e2e.bench.stages import Stages
from e2e.localcluster import LocalCluster
from e2e.support import free_port, terminate, wait_for

GROUP, VERSION, PLURAL = "serving.marfleet.io", "v1alpha1", "inferenceservices"
CRD = Path(__file__).resolve().parents[2] / "crds" / "inferenceservice.yaml"
DEFAULT_MARFLEET = str(Path(sys.executable).with_name("marfleet"))
COUNTED = ("marfleet_operator_renders_total", "marfleet_operator_watch_events_total")
"""Counters reported per InferenceService besides writes and reconciliations."""
APPLY_THREADS = 8
"""Concurrent server-side applies when submitting the N InferenceServices or their edits."""
TIMEOUT = 1200.0
"""Longest wait for one phase (all Ready, all weights in force, a restart)."""
UNSEEN_SECONDS = 60.0
"""A follower whose watch has seen none of a run's objects this long after they were applied
gives up on the run (instead of waiting `TIMEOUT`)."""


RUN_LABEL = "bench.marfleet.io/run"
"""Carried by every InferenceService of one run: the follower watches them by it."""


def manifests(
    count: int,
    run: str,
    namespaces: list[str],
    weights: tuple[int, int] = (90, 10),
    multi_every: int = 3,
) -> list[dict]:
    """The N InferenceServices of `run`, dealt out over `namespaces` in turn (names are unique
    across them): every `multi_every`th with two variants, every other one HPA-scaled."""
    items = []
    for index in range(count):
        namespace = namespaces[index % len(namespaces)]
        name = f"isvc-{index:04d}"
        two = index % multi_every == 0
        variants = [("stable", weights[0]), ("canary", weights[1])] if two else [("main", 100)]
        autoscaling: dict[str, Any] = (
            {"engine": "hpa", "minReplicas": 1, "maxReplicas": 3}
            if index % 2 == 0
            else {"engine": "none", "minReplicas": 1}
        )
        items.append(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "InferenceService",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {RUN_LABEL: run},
                },
                "spec": {
                    "variants": [
                        {
                            "name": v,
                            "weight": w,
                            "model": {"uri": f"https://models.example/{name}-{v}.mar"},
                        }
                        for v, w in variants
                    ],
                    "autoscaling": autoscaling,
                },
            }
        )
    return items


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(statistics.median(values), 2),
        "p99": round(percentile(values, 0.99), 2),
        "max": round(max(values), 2),
    }


def by_shape(objects: list[dict[str, Any]], ready: dict[str, float]) -> dict[str, Any]:
    """apply→Ready of the one-variant and the two-variant InferenceServices apart: which
    shape makes the tail."""
    shapes: dict[str, list[float]] = {}
    for obj in objects:
        name = obj["metadata"]["name"]
        if name in ready:
            shape = f"{len(obj['spec']['variants'])} variants"
            shapes.setdefault(shape, []).append(ready[name])
    return {shape: summary(values) for shape, values in sorted(shapes.items())}


def cpu_seconds(pid: int) -> float:
    return sum(cpu_user_system(pid))


def cpu_user_system(pid: int) -> tuple[float, float]:
    """CPU seconds in user space and in the kernel (system calls: sockets, polling)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def control_plane_cpu(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds of each of the cluster's own processes (etcd, apiserver, controllers,
    KWOK), by name."""
    seconds: dict[str, float] = {}
    for name, pid in cluster.state.pids.items():
        with contextlib.suppress(OSError):
            seconds[name] = cpu_seconds(pid)
    return seconds


def api_requests(cluster: LocalCluster) -> Counter[str]:
    """The API server's requests so far (`apiserver_request_total`), by "VERB resource" (and
    subresource), watches and long-running calls included."""
    counts: Counter[str] = Counter()
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        fields = dict(_LABEL.findall(labels))
        what = " ".join(
            part for part in (fields.get("resource"), fields.get("subresource")) if part
        )
        counts[f"{fields.get('verb', '?')} {what}"] += int(float(value))
    return counts


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


@dataclass
class Operator:
    """One `marfleet operator` process (possibly under py-spy) and its /metrics."""

    marfleet: str
    cluster: LocalCluster
    namespaces: list[str]
    lease: str
    log: Path
    profile: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self) -> None:
        self.port = free_port()
        command = [
            self.marfleet,
            "operator",
            *(f"--namespace={namespace}" for namespace in self.namespaces),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--lease-namespace",
            "default",
            "--lease-name",
            self.lease,
            "--runtime-image",
            "registry.example/marfleet:bench",
        ]
        if self.profile is not None:
            py_spy = str(Path(sys.executable).with_name("py-spy"))
            # --gil: only samples holding the GIL, i.e. the operator's Python running
            command = [py_spy, "record", "--format", "raw", "--rate", "100", "--gil",
                       "--nonblocking", "-o", str(self.profile), "--", *command]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command,
                env={**self.cluster.env(), "TMPDIR": str(self.log.parent)},  # its leftovers
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The operator's own pid (py-spy's child when profiled)."""
        assert self.proc is not None
        if self.profile is None:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        found = wait_for(lambda: children.read_text().split(), 30, "the profiled operator")
        return int(found[0])

    def metrics(self) -> dict[str, float]:
        """Every sample on /metrics, labels folded into the name; {} while it does not answer."""
        try:
            text = subprocess.run(
                ["curl", "-sf", "--max-time", "5", f"http://127.0.0.1:{self.port}/metrics"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
        except subprocess.TimeoutExpired:
            return {}
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def total(self, metric: str) -> float:
        samples = self.metrics()
        return sum(v for k, v in samples.items() if k.split("{")[0] == metric)

    def wait_leading(self, timeout: float = 120) -> None:
        wait_for(
            lambda: self.metrics().get("marfleet_operator_leader") == 1.0,
            timeout,
            f"operator leadership ({self.log})",
            interval=0.2,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.profile is not None and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)  # py-spy writes its profile once the child exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
        terminate(self.proc, grace=30)


class Follower:
    """Watches one run's InferenceServices (labelled `RUN_LABEL=run`, in any namespace) and
    records when each one first satisfies a predicate (run `expect` before making the change
    it should observe)."""

    def __init__(self, api: k8s.ApiClient, run: str) -> None:
        self.api = api
        self.run = run
        self.lock = threading.Lock()
        self.objects: dict[str, dict[str, Any]] = {}
        self.reached: dict[str, float] = {}
        self.first_seen: dict[str, float] = {}
        """Since `expect`: when each object was first seen (created, for a new one)."""
        self.predicate: Any = None
        self.started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def expect(self, predicate: Any) -> None:
        with self.lock:
            self.reached = {}
            self.first_seen = {}
            self.predicate = predicate
            self.started = time.monotonic()
            for name, obj in self.objects.items():
                self._check(name, obj)

    def wait(
        self, names: set[str], timeout: float, unseen: float = UNSEEN_SECONDS
    ) -> dict[str, float]:
        """When each of `names` reached the predicate (those that did within `timeout`).
        Raises when the watch has seen none of the run's objects `unseen` seconds after
        `expect`: they were applied, so the watch is broken, and waiting longer measures
        nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if names <= set(self.reached):
                    return dict(self.reached)
                if not self.first_seen and time.monotonic() - self.started > unseen:
                    raise RuntimeError(
                        f"the watch saw none of run {self.run}'s InferenceServices "
                        f"({RUN_LABEL}={self.run}) {unseen:g} s after they were applied"
                    )
            time.sleep(0.1)
        with self.lock:
            return dict(self.reached)

    def stop(self) -> None:
        self._stop.set()

    def _check(self, name: str, obj: dict[str, Any]) -> None:
        self.first_seen.setdefault(name, time.monotonic() - self.started)
        if self.predicate is not None and name not in self.reached and self.predicate(obj):
            self.reached[name] = time.monotonic() - self.started

    def observe(self, kind: str, obj: dict[str, Any]) -> None:
        """One watch event (`kind` ADDED, MODIFIED or DELETED) for one of the run's objects."""
        name = obj["metadata"]["name"]
        with self.lock:
            if kind == "DELETED":
                self.objects.pop(name, None)
                return
            self.objects[name] = obj
            self._check(name, obj)

    def _run(self) -> None:
        custom = k8s.CustomObjectsApi(self.api)
        while not self._stop.is_set():
            stream = k8s_watch.Watch().stream(
                custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                label_selector=f"{RUN_LABEL}={self.run}",
                timeout_seconds=30,
            )
            try:
                for event in stream:
                    self.observe(event["type"], event["object"])
                    if self._stop.is_set():
                        return
            except Exception as error:  # a dropped watch: list and watch again
                print(f"watch restarted: {error}", file=sys.stderr)


def ready_now(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    if st.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
    )


def weights_in_force(want: tuple[int, int]) -> Any:
    def check(obj: dict[str, Any]) -> bool:
        st = obj.get("status") or {}
        if st.get("observedGeneration") != obj["metadata"].get("generation"):
            return False
        return tuple(v.get("weight") for v in st.get("variants") or []) == want

    return check


def error_lines(log: Path) -> list[str]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if '"level": "error"' in line or '"level": "critical"' in line or "Traceback" in line:
            found.append(line[:300])
    return found


def settle(operator: Operator, quiet: float = 5.0, limit: float = 60.0) -> None:
    """Wait until writes and reconciliations stop moving for `quiet` seconds."""
    deadline = time.monotonic() + limit
    last = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        now = (
            operator.total("marfleet_operator_writes_total"),
            operator.total("marfleet_operator_reconciles_total"),
        )
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.5)


def run_one(
    cluster: LocalCluster,
    api: k8s.ApiClient,
    label: str,
    marfleet: str,
    count: int,
    workdir: Path,
    profile: bool,
    multi_every: int = 3,
    wait_cleanup: bool = True,
    stages: bool = False,
    spread: int = 1,
) -> dict[str, Any]:
    run = f"bench-{label}-{count}-{uuid.uuid4().hex[:5]}"
    namespaces = [run] if spread == 1 else [f"{run}-{i}" for i in range(spread)]
    for namespace in namespaces:
        cluster.kubectl("create", "namespace", namespace)
    log = workdir / f"{run}.log"
    prof = workdir / f"{run}.pyspy.txt" if profile else None
    operator = Operator(marfleet, cluster, namespaces, f"bench-{run}", log, prof)
    follower = Follower(api, run)
    watcher = Stages(api, run) if stages else None
    result: dict[str, Any] = {
        "operator": label,
        "inferenceservices": count,
        "namespaces": spread,
        "log": str(log),
    }
    objects = manifests(count, run, namespaces, multi_every=multi_every)
    names = {o["metadata"]["name"] for o in objects}
    try:
        operator.start()
        operator.wait_leading()
        pid = operator.pid
        follower.start()
        time.sleep(1)
        rss_idle = peak_rss_mib(pid)
        writes0 = operator.total("marfleet_operator_writes_total")
        reconciles0 = operator.total("marfleet_operator_reconciles_total")
        counted0 = {m: operator.total(m) for m in COUNTED}
        cpu0 = cpu_seconds(pid)
        user0, system0 = cpu_user_system(pid)
        plane0 = control_plane_cpu(cluster)
        harness0 = time.process_time()
        requests0 = api_requests(cluster)
        if watcher is not None:
            watcher.start()
            time.sleep(1)
        load0 = os.getloadavg()[0]
        follower.expect(ready_now)
        applied = apply_all(api, objects, follower.started)
        result["apply_seconds"] = round(max(applied.values()), 2)
        ready = follower.wait(names, TIMEOUT)
        created = applied
        cpu_ready = cpu_seconds(pid) - cpu0
        plane1 = control_plane_cpu(cluster)
        harness_ready = time.process_time() - harness0
        plane_ready = {k: v - plane0.get(k, 0.0) for k, v in plane1.items()}
        requests = api_requests(cluster) - requests0
        settle(operator)
        cpu_settled = cpu_seconds(pid) - cpu0
        user1, system1 = cpu_user_system(pid)
        writes = operator.total("marfleet_operator_writes_total") - writes0
        by_verb: dict[str, float] = {}
        for sample, value in operator.metrics().items():
            if sample.startswith("marfleet_operator_writes_total{"):
                verb = sample.split('verb="', 1)[1].split('"', 1)[0]
                by_verb[verb] = by_verb.get(verb, 0.0) + value
        reconciles = operator.total("marfleet_operator_reconciles_total") - reconciles0
        counted = {m: operator.total(m) - counted0[m] for m in COUNTED}
        result.update(
            ready=len(ready),
            apply_to_ready=summary(list(ready.values())),
            created_to_ready=summary([t - created.get(n, 0.0) for n, t in ready.items()]),
            apply_to_ready_by_shape=by_shape(objects, ready),
            control_plane_cpu_seconds_to_ready=round(sum(plane_ready.values()), 1),
            control_plane_cpu_seconds_by_process={
                k: round(v, 1) for k, v in sorted(plane_ready.items(), key=lambda kv: -kv[1])
            },
            operator_cpu_seconds_to_ready=round(cpu_ready, 2),
            harness_cpu_seconds_to_ready=round(harness_ready, 2),
            operator_cpu_seconds_settled=round(cpu_settled, 2),
            cpu_ms_per_isvc=round(1000 * cpu_settled / count, 1),
            cpu_ms_per_isvc_user_system=(
                round(1000 * (user1 - user0) / count, 1),
                round(1000 * (system1 - system0) / count, 1),
            ),
            writes_per_isvc=round(writes / count, 2),
            writes_per_isvc_by_verb={v: round(n / count, 2) for v, n in sorted(by_verb.items())},
            reconciles_per_isvc=round(reconciles / count, 2),
            **{
                f"{name}_per_isvc": round(value / count, 2)
                for name, value in (
                    (m.removeprefix("marfleet_operator_").removesuffix("_total"), v)
                    for m, v in counted.items()
                )
                if value  # builds without the metric report none
            },
            api_requests_to_ready_per_isvc=round(requests.total() / count, 1),
            api_requests_to_ready_top={k: n for k, n in requests.most_common(40)},
            operator_idle_rss_mib=rss_idle,
            load_average_1m_before=round(load0, 1),
            load_average_1m_after=round(os.getloadavg()[0], 1),
        )
        if watcher is not None:
            result["stages"] = watcher.report(follower.started)
        print(f"[{label} N={count}] {json.dumps(result)}", file=sys.stderr)
        result["operator_peak_rss_mib"] = peak_rss_mib(pid)
        if not profile:
            measure_weights_and_restart(
                api, operator, follower, result, count, run, namespaces, multi_every
            )
    finally:
        follower.stop()
        if watcher is not None:
            watcher.stop()
        operator.stop()
        errors = error_lines(log)
        result["log_errors"] = len(errors)
        result["log_error_samples"] = errors[:5]
        cluster.kubectl("delete", "namespace", *namespaces, "--wait=false")
        if wait_cleanup:
            for namespace in namespaces:
                wait_gone(cluster, namespace)
    if prof is not None and prof.exists():
        result["profile"] = top_costs(prof)
    return result


def apply_all(
    api: k8s.ApiClient, objects: list[dict[str, Any]], started: float
) -> dict[str, float]:
    """Server-side apply every object, `APPLY_THREADS` at a time, as kubectl's field manager
    (so an edit is the same as `kubectl apply --server-side` of it); return when each one's
    write was answered, in seconds since `started` (at that moment it is in force in the API
    server). kubectl itself submits one object after the other: at 1,000 objects on this
    machine that alone took more than 10 minutes, which is not what "at once" means."""
    custom = k8s.CustomObjectsApi(api)

    def one(obj: dict[str, Any]) -> tuple[str, float]:
        meta = obj["metadata"]
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], obj,
            field_manager="kubectl", force=True,
            _content_type="application/apply-patch+yaml", _request_timeout=120,
        )  # fmt: skip
        return meta["name"], time.monotonic() - started

    with ThreadPoolExecutor(APPLY_THREADS) as pool:
        return dict(pool.map(one, objects))


def measure_weights_and_restart(
    api: k8s.ApiClient,
    operator: Operator,
    follower: Follower,
    result: dict[str, Any],
    count: int,
    run: str,
    namespaces: list[str],
    multi_every: int,
) -> None:
    """Steps 4 and 5: a weight change on every two-variant InferenceService at once, then a
    restart of the operator with everything converged."""
    pid = operator.pid
    cpu1 = cpu_seconds(pid)
    writes1 = operator.total("marfleet_operator_writes_total")
    changed = [
        o
        for o in manifests(count, run, namespaces, (50, 50), multi_every)
        if len(o["spec"]["variants"]) == 2
    ]
    names = {o["metadata"]["name"] for o in changed}
    follower.expect(weights_in_force((50, 50)))
    edited = apply_all(api, changed, follower.started)
    in_force = follower.wait(names, TIMEOUT)
    settle(operator)
    result["weight_change"] = {
        "inferenceservices": len(names),
        "in_force": len(in_force),
        "edits_submitted_seconds": round(max(edited.values()), 2),
        "edit_to_weights_in_force": summary([max(0.0, t - edited[n]) for n, t in in_force.items()]),
        "first_edit_to_all_in_force": round(max(in_force.values(), default=0.0), 2),
        "operator_cpu_seconds": round(cpu_seconds(pid) - cpu1, 2),
        "writes": operator.total("marfleet_operator_writes_total") - writes1,
        "load_average_1m": round(os.getloadavg()[0], 1),
    }
    print(f"[N={count}] weights {json.dumps(result['weight_change'])}", file=sys.stderr)
    result["operator_peak_rss_mib"] = peak_rss_mib(pid)

    # a restart with everything converged
    operator.stop()
    restarted_at = time.monotonic()
    operator.start()
    operator.wait_leading()
    leading = time.monotonic() - restarted_at
    wait_for(
        lambda: operator.total("marfleet_operator_reconciles_total") >= count,
        TIMEOUT,
        "every InferenceService reconciled after the restart",
        interval=0.2,
    )
    acting = time.monotonic() - restarted_at
    settle(operator)
    result["restart"] = {
        "seconds_to_lead": round(leading, 2),
        "seconds_to_reconcile_all": round(acting, 2),
        "writes": operator.total("marfleet_operator_writes_total"),
        "writes_by_kind": {
            k: v
            for k, v in operator.metrics().items()
            if k.startswith("marfleet_operator_writes_total{") and v
        },
        "peak_rss_mib": peak_rss_mib(operator.pid),
    }
    print(f"[N={count}] restart {json.dumps(result['restart'])}", file=sys.stderr)


def wait_gone(cluster: LocalCluster, namespace: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cluster.kubectl("get", "namespace", namespace, check=False)
        if got.returncode != 0:
            return
        time.sleep(2)


IDLE_LEAVES = (
    "EpollSelector.select ",
    "SSLSocket.read ",
    "SSLSocket.recv_into ",
    "_worker (futures/thread.py)",
    "do_poll ",
    "Condition.wait ",
    "Event.wait ",
    "Thread.join ",
)
"""Leaf frames of a thread that waits (py-spy here cannot tell waiting threads from running
ones): samples ending in one of these are not CPU and are left out."""


def top_costs(raw: Path, count: int = 15) -> dict[str, list[tuple[str, float]]]:
    """From py-spy's raw (collapsed) stacks: the functions with the most samples on top of the
    stack (own) and anywhere in it (total), as shares of the samples that were on CPU."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [f.split(" (")[0] + " " + _where(f) for f in stack.split(";")]
        weight = int(n)
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        samples += weight
        own[frames[-1]] += weight
        for frame in set(frames):
            total[frame] += weight
    if not samples:
        return {}

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(frame, round(100 * n / samples, 1)) for frame, n in counter.most_common(count)]

    return {"own": shares(own), "total": shares(total), "samples": [("all", float(samples))]}


def _where(frame: str) -> str:
    """'(file.py:12)' -> '(package/file.py)': the function's module, without the line."""
    inside = frame.partition(" (")[2].rstrip(")")
    path = inside.rsplit(":", 1)[0]
    parts = Path(path).parts
    return "(" + "/".join(parts[-2:]) + ")"


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| operator | N | apply s | apply→Ready p50 / p99 s | Ready | CPU ms / isvc "
        "| writes / isvc | reconciles / isvc | peak RSS MiB | weight change: N, p50 / p99 s "
        "| restart: lead s, all reconciled s, writes | log errors | load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ready = r.get("apply_to_ready", {})
        weight = r.get("weight_change", {})
        wsum = weight.get("edit_to_weights_in_force", {})
        restart = r.get("restart", {})
        spread = r.get("namespaces", 1)
        where = f" in {spread} namespaces" if spread > 1 else ""
        rows.append(
            f"| {r['operator']} | {r['inferenceservices']}{where} | {r.get('apply_seconds', '-')} "
            f"| {ready.get('p50', '-')} / {ready.get('p99', '-')} "
            f"| {r.get('ready', '-')} | {r.get('cpu_ms_per_isvc', '-')} "
            f"| {r.get('writes_per_isvc', '-')} | {r.get('reconciles_per_isvc', '-')} "
            f"| {r.get('operator_peak_rss_mib', '-')} "
            f"| {weight.get('in_force', '-')}, {wsum.get('p50', '-')} / {wsum.get('p99', '-')} "
            f"| {restart.get('seconds_to_lead', '-')}, "
            f"{restart.get('seconds_to_reconcile_all', '-')}, {restart.get('writes', '-')} "
            f"| {r.get('log_errors', '-')} "
            f"| {r.get('load_average_1m_before', '-')} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.bench.operator_scale")
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--nodes", type=int, default=50, help="simulated CPU nodes")
    parser.add_argument("--cluster", default="bench-operator", help="local cluster name")
    parser.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="LABEL=MARFLEET",
        help="an operator build to measure (repeatable; default: this tree's marfleet)",
    )
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster running")
    parser.add_argument("--profile-dir", type=Path, default=None, help="run under py-spy")
    parser.add_argument(
        "--no-cleanup-wait",
        action="store_true",
        help="do not wait for the last run's namespace to be deleted (a cluster thrown away "
        "afterwards: deleting 1,000 InferenceServices takes minutes)",
    )
    parser.add_argument(
        "--up-to",
        action="append",
        default=[],
        metavar="LABEL=N",
        help="measure build LABEL only for counts up to N (e.g. the slow old build at 100)",
    )
    parser.add_argument(
        "--multi-every",
        type=int,
        default=3,
        metavar="K",
        help="every Kth InferenceService has two variants (1: all, e.g. to change 100 weights)",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also time each child's stages (e2e/bench/stages.py; its watches cost CPU)",
    )
    parser.add_argument(
        "--namespaces",
        type=int,
        default=1,
        metavar="K",
        help="deal each run's InferenceServices out over K namespaces (default 1)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/operator-bench.json"))
    args = parser.parse_args(argv)
    if args.namespaces < 1:
        parser.error("--namespaces must be at least 1")
    if args.stages and args.namespaces > 1:
        parser.error("--stages follows one namespace: use it with --namespaces 1")
    builds = [tuple(item.split("=", 1)) for item in args.operator] or [
        ("current", DEFAULT_MARFLEET)
    ]
    cluster = LocalCluster(args.cluster, cpu_nodes=args.nodes)
    started_here = not cluster.is_running()
    cluster.up(timeout=300)
    workdir = args.profile_dir or args.out.parent / "operator-scale-logs"
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        established = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
        wait_for(
            lambda: (
                cluster.kubectl(
                    "get", "crd", f"{PLURAL}.{GROUP}", "-o", established, check=False
                ).stdout
                == "True"
            ),
            60,
            "the InferenceService CRD established",
        )
        api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
        limits = dict(item.split("=", 1) for item in args.up_to)
        plan = [
            (count, label, marfleet)
            for round_index, count in enumerate(args.counts)
            # alternate which build goes first, so neither always meets the warmer cluster
            for label, marfleet in (builds if round_index % 2 == 0 else list(reversed(builds)))
            if count <= int(limits.get(label, count))
        ]
        for index, (count, label, marfleet) in enumerate(plan):
            last = index == len(plan) - 1
            try:
                result = run_one(
                    cluster,
                    api,
                    label,
                    marfleet,
                    count,
                    workdir,
                    args.profile_dir is not None,
                    args.multi_every,
                    not (last and args.no_cleanup_wait),
                    args.stages,
                    args.namespaces,
                )
            except Exception as error:  # one failed round: keep what the others measured
                result = {
                    "operator": label,
                    "inferenceservices": count,
                    "namespaces": args.namespaces,
                    "error": f"{type(error).__name__}: {error}",
                }
                print(f"[{label} N={count}] failed: {result['error']}", file=sys.stderr)
            results.append(result)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"runs": results}, indent=2) + "\n")
    finally:
        if started_here and not args.keep_cluster:
            cluster.down()
    print(table(results))
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"{r['operator']} N={r['inferenceservices']} failed: {r['error']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
