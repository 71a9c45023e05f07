"""The numbers a rollout is judged on: the canary's and the stable variants' requests, 5xx
answers and p99 latency over the current step, as the routers saw them.

Two sources, one interface (`observe`):

- `PrometheusSource` asks Prometheus for the increase of the routers' series over the step
  (window = time since the step began, so it survives an operator restart);
- `RouterScrape` reads every router's /metrics itself when there is no Prometheus: the URL
  template's host is resolved to all its addresses (a headless Service gives one per router
  pod), the counters are summed, and the first reading of a step is its baseline. Counters
  that went down (a router restarted) start a new baseline. Every router of an
  InferenceService is read at once under one deadline for the whole reading, and a body larger
  than `max_bytes` is cut off: a router that trickles or floods (or a pod that only pretends to
  be one) costs at most the deadline and the cap, never the other InferenceServices' turn.

Both read `marfleet_router_requests_total` and `marfleet_router_request_duration_seconds`
(docs/metrics.md), per variant and per `version` (the model version the answering server
named; empty for the router's own 502/504 and for servers that name none). The canary's side
counts only answers of the version under analysis (and unnamed ones: the step's clock starts
once no other canary revision runs), so an old revision still answering is never evidence.
Latency stays in buckets: the decision counts requests over a bound, never interpolates.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .rollout import Numbers, Observation

REQUESTS = "marfleet_router_requests_total"
DURATION_BUCKET = "marfleet_router_request_duration_seconds_bucket"
MIN_PROMETHEUS_WINDOW = 10
FIVE_XX = ',code_class="5xx"'
MAX_METRICS_BYTES = 4 * 1024 * 1024
"""A router's /metrics is a few KiB per variant; anything near this is not a router."""


ANY_VERSION = ""
"""Subject.version when the canary's spec names no model version: every canary answer counts."""


class MetricsUnavailable(Exception):
    """The numbers could not be read; the rollout holds its step and says why."""


@dataclass(frozen=True)
class Subject:
    """What to observe: one InferenceService's canary and the variants it is compared with."""

    namespace: str
    isvc: str
    canary: str
    stable: tuple[str, ...]
    window_id: str  # changes when a new analysis window (a new step) begins
    window_seconds: float
    version: str = ANY_VERSION  # the canary's model version under analysis


class MetricsSource(Protocol):
    async def observe(self, subject: Subject) -> Observation: ...


@dataclass
class Tally:
    """Cumulative counts of one side: requests, 5xx answers and latency buckets (le → count)."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.errors += other.errors
        for bound, count in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0.0) + count

    def minus(self, base: Tally) -> Tally:
        return Tally(
            self.requests - base.requests,
            self.errors - base.errors,
            {b: c - base.buckets.get(b, 0.0) for b, c in self.buckets.items()},
        )

    def went_down_from(self, base: Tally) -> bool:
        return self.requests < base.requests or self.errors < base.errors

    def numbers(self) -> Numbers:
        return Numbers(self.requests, self.errors, dict(self.buckets))


Series = tuple[str, str]
"""(variant, version) of a router series."""


def tallies(text: str, namespace: str, isvc: str) -> dict[Series, Tally]:
    """Per (variant, version) tallies of one InferenceService from a router's Prometheus text."""
    result: dict[Series, Tally] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("isvc") != isvc or labels.get("namespace") != namespace:
                continue
            series = (labels.get("variant", ""), labels.get("version", ""))
            tally = result.setdefault(series, Tally())
            if sample.name == REQUESTS:
                tally.requests += sample.value
                if labels.get("code_class") == "5xx":
                    tally.errors += sample.value
            elif sample.name == DURATION_BUCKET:
                bound = float(labels["le"])
                tally.buckets[bound] = tally.buckets.get(bound, 0.0) + sample.value
    return result


def observation(per_series: Mapping[Series, Tally], subject: Subject) -> Observation:
    """The canary (only its version under analysis, and answers naming none) against the
    other variants (every version)."""
    canary, stable = Tally(), Tally()
    elsewhere: dict[str, float] = {}
    for (variant, version), tally in per_series.items():
        if variant == subject.canary:
            if subject.version in (ANY_VERSION, version) or version == "":
                canary.add(tally)
            elif tally.requests > 0:
                elsewhere[version] = elsewhere.get(version, 0.0) + tally.requests
        elif variant in subject.stable:
            stable.add(tally)
    return Observation(canary.numbers(), stable.numbers(), elsewhere)


class RouterScrape:
    """Reads the routers' /metrics directly; see the module docstring."""

    def __init__(
        self,
        url_template: str,
        timeout: float = 5.0,
        deadline: float = 10.0,
        max_bytes: int = MAX_METRICS_BYTES,
    ) -> None:
        self._template = url_template
        self._timeout = timeout
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._baselines: dict[tuple[str, str], tuple[str, dict[Series, Tally]]] = {}

    async def observe(self, subject: Subject) -> Observation:
        now = await self._read(subject)
        key = (subject.namespace, subject.isvc)
        window, base = self._baselines.get(key, ("", {}))
        if window != subject.window_id or any(
            tally.went_down_from(base.get(name, Tally())) for name, tally in now.items()
        ):
            self._baselines[key] = (subject.window_id, now)
            base = now
        delta = {name: tally.minus(base.get(name, Tally())) for name, tally in now.items()}
        return observation(delta, subject)

    async def _read(self, subject: Subject) -> dict[Series, Tally]:
        url = self._template.format(isvc=subject.isvc, namespace=subject.namespace)
        try:
            async with asyncio.timeout(self._deadline):
                texts = await self._read_all(url)
        except TimeoutError:
            raise MetricsUnavailable(
                f"reading router metrics at {url}: no complete answer within {self._deadline:g}s"
            ) from None
        total: dict[Series, Tally] = {}
        for text in texts:
            for name, tally in tallies(text, subject.namespace, subject.isvc).items():
                total.setdefault(name, Tally()).add(tally)
        return total

    async def _read_all(self, url: str) -> list[str]:
        """Every router's /metrics text, read concurrently; the first failure ends them all."""
        urls = await _each_address(url)
        try:
            async with (
                httpx.AsyncClient(timeout=self._timeout) as client,
                asyncio.TaskGroup() as group,
            ):
                reads = [group.create_task(self._fetch(client, address)) for address in urls]
        except ExceptionGroup as failures:
            first = failures.exceptions[0]
            if isinstance(first, MetricsUnavailable):
                raise first from None
            raise
        return [read.result() for read in reads]

    async def _fetch(self, client: httpx.AsyncClient, address: str) -> str:
        body = bytearray()
        try:
            async with client.stream("GET", address) as response:
                response.raise_for_status()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise MetricsUnavailable(
                            f"router metrics at {address} exceed {self._max_bytes} bytes: "
                            "that is no marfleet router"
                        )
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"reading router metrics at {address}: {exc}") from exc
        return body.decode(errors="replace")


async def _each_address(url: str) -> list[str]:
    """`url` once per address its host resolves to (one per router pod behind a headless
    Service)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise MetricsUnavailable(f"resolving router metrics host {host!r}: {exc}") from exc
    addresses = sorted({str(info[4][0]) for info in infos})
    netlocs = [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]
    return [urlunsplit(parts._replace(netloc=n)) for n in netlocs]


class PrometheusSource:
    """Asks Prometheus (HTTP API /api/v1/query) for the routers' increases over the step."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._timeout = timeout

    async def observe(self, subject: Subject) -> Observation:
        window = max(MIN_PROMETHEUS_WINDOW, math.ceil(subject.window_seconds))
        selector = f'namespace="{subject.namespace}",isvc="{subject.isvc}"'

        def increase(series: str, extra: str = "") -> str:
            return f"increase({series}{{{selector}{extra}}}[{window}s])"

        queries = {
            "requests": f"sum by (variant, version) ({increase(REQUESTS)})",
            "errors": f"sum by (variant, version) ({increase(REQUESTS, FIVE_XX)})",
            "buckets": f"sum by (variant, version, le) ({increase(DURATION_BUCKET)})",
        }
        per_series: dict[Series, Tally] = {}
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            for what, query in queries.items():
                for labels, value in await self._query(client, query):
                    series = (labels.get("variant", ""), labels.get("version", ""))
                    tally = per_series.setdefault(series, Tally())
                    if what == "requests":
                        tally.requests = value
                    elif what == "errors":
                        tally.errors = value
                    else:
                        tally.buckets[float(labels["le"])] = value
        return observation(per_series, subject)

    async def _query(
        self, client: httpx.AsyncClient, query: str
    ) -> Iterable[tuple[dict[str, str], float]]:
        try:
            response = await client.get(f"{self._url}/api/v1/query", params={"query": query})
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise MetricsUnavailable(f"querying Prometheus at {self._url}: {exc}") from exc
        if body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus refused {query!r}: {body.get('error', body)}")
        return parse_vector(body["data"]["result"])


def parse_vector(result: Sequence[Mapping[str, Any]]) -> list[tuple[dict[str, str], float]]:
    """An instant vector's (labels, value) pairs, skipping NaN (no data in the window)."""
    pairs = []
    for item in result:
        labels = {str(k): str(v) for k, v in item["metric"].items()}
        value = float(item["value"][1])
        if not math.isnan(value):
            pairs.append((labels, value))
    return pairs
