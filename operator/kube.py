"""The only module that writes to the Kubernetes API server (watch.py reads its watch streams).

Plain JSON with the official client's configuration loader (kubeconfig or in-cluster config,
credentials refreshed where it refreshes them), addressed by apiVersion/kind through a small
table of the kinds the operator touches, so manifests stay plain dicts from renderer to wire:
a request is one JSON encoding, one HTTP call on a pooled connection and one decoding (orjson:
several times cheaper than the standard library, and most of the operator's CPU is API traffic).
Calls are asynchronous, on the event loop that runs the watches and the workers, through the
router's keep-alive HTTP/1.1 client (runtime/router/upstream.py: an asyncio Protocol feeding
httptools, TLS, a deadline per exchange): aiohttp cost about twice the CPU per call in URL,
header and cookie machinery the operator has no use for, and a synchronous client in a thread
pool more again, in thread hand-offs (docs/scale.md). At most `connections` calls are in flight.
Writes are server-side apply under one field manager with `force`, so the operator reclaims
fields a person changed by hand, and everything else in an object (fields set by other
managers) is left alone.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from marfleet.runtime.router.upstream import (
    RESET,
    BodyStream,
    Timeouts,
    UpstreamError,
    UpstreamPool,
)

from .spec import API_VERSION, KIND, PLURAL

FIELD_MANAGER = "marfleet-operator"
APPLY_CONTENT = "application/apply-patch+yaml"

PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Event"): "events",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Secret"): "secrets",  # existence only (KubeAPI.exists: metadata, never data)
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("apps/v1", "Deployment"): "deployments",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "customresourcedefinitions",
    (API_VERSION, KIND): PLURAL,
}
CLUSTER_SCOPED = {"CustomResourceDefinition"}
CREDENTIALS_RECHECK_SECONDS = 30.0


class ApiError(RuntimeError):
    """A request the API server refused; `status` is the HTTP status (0: no answer)."""

    def __init__(
        self, status: int, reason: str, message: str, causes: tuple[str, ...] = ()
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes
        """The type of each cause the server listed (e.g. NamespaceTerminating); it travels in
        the cause's `reason` field."""

    @property
    def retriable(self) -> bool:
        return self.status in (0, 409, 429) or self.status >= 500


@dataclass(frozen=True)
class Ref:
    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Ref:
        meta = obj["metadata"]
        return cls(obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta.get("name", ""))

    def path(self, *, collection: bool = False, subresource: str = "") -> str:
        group = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        plural = PLURALS[(self.api_version, self.kind)]
        scope = "" if self.kind in CLUSTER_SCOPED else f"/namespaces/{self.namespace}"
        path = f"{group}{scope}/{plural}"
        if not collection:
            path += f"/{self.name}"
        return f"{path}/{subresource}" if subresource else path


@dataclass(frozen=True)
class Credentials:
    """How to reach the API server, for the watches' connections (same source as ours)."""

    server: str
    ca_path: str | None
    insecure: bool
    scheme: str | None
    token: str | None
    certificate_path: str | None
    private_key_path: str | None


def ssl_context(creds: Credentials) -> ssl.SSLContext:
    """The TLS settings `creds` ask for (CA, client certificate, verification)."""
    context = ssl.create_default_context(cafile=creds.ca_path)
    if creds.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if creds.certificate_path and creds.private_key_path:
        context.load_cert_chain(creds.certificate_path, creds.private_key_path)
    return context


class KubeAPI:
    """Calls to the API server. `async with KubeAPI(...)` (or open() and close()) around use:
    the connection pool lives on the event loop that opened it."""

    def __init__(
        self, kubeconfig: str | None = None, timeout: float = 30.0, connections: int = 32
    ) -> None:
        configuration = k8s.Configuration()
        if kubeconfig is not None:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)
            except k8s_config.ConfigException:
                k8s_config.load_kube_config(client_configuration=configuration)
        self._configuration = configuration
        self._connections = connections
        self._timeouts = Timeouts(connect=5.0, response=timeout, idle=IDLE_SECONDS)
        server = urlsplit(configuration.host)
        self._prefix = server.path.rstrip("/")
        self._host_header = server.netloc
        self._pool: UpstreamPool | None = None
        self._slots = asyncio.Semaphore(connections)
        self._authorization: str | None = None
        self._authorization_until = 0.0

    async def open(self) -> None:
        if self._pool is None:
            host = self._configuration.host
            tls = ssl_context(self.credentials()) if host.startswith("https:") else None
            self._pool = UpstreamPool(
                host,
                self._timeouts,
                tls=tls,
                max_idle=self._connections,
                max_buffered=MAX_ANSWER_BYTES,  # longer answers stream: `_whole` caps them
            )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def __aenter__(self) -> KubeAPI:
        await self.open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def authorization(self) -> str | None:
        """The Authorization header, as the configuration has it at most
        `CREDENTIALS_RECHECK_SECONDS` ago: asking it refreshes in-cluster and exec
        credentials, and for a kubeconfig reloads its authentication each time (a measurable
        share of the CPU per call), while a token stays valid for far longer."""
        now = time.monotonic()
        if now >= self._authorization_until:
            self._authorization = self._configuration.get_api_key_with_prefix("BearerToken")
            self._authorization_until = now + CREDENTIALS_RECHECK_SECONDS
        return self._authorization

    def credentials(self) -> Credentials:
        config = self._configuration
        header = self.authorization() or ""
        scheme, _, token = header.rpartition(" ")
        return Credentials(
            server=config.host,
            ca_path=config.ssl_ca_cert,
            insecure=not config.verify_ssl,
            scheme=scheme or None,
            token=token or None,
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
        )

    # ----- objects -----
    async def get(self, ref: Ref, *, cached: bool = False) -> dict[str, Any] | None:
        """The object, or None if there is none. `cached`: as the API server's watch cache has
        it (resourceVersion=0: no read from etcd, which matters to the API server when many
        objects are asked for at once; a write made a moment ago may not be there yet)."""
        try:
            return await self._request(
                "GET", ref.path(), query=[("resourceVersion", "0")] if cached else ()
            )
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def exists(self, ref: Ref) -> bool:
        """Whether the object exists, asking for its metadata only (PartialObjectMetadata):
        used for Secrets, whose data the operator never needs to receive."""
        try:
            await self._request("GET", ref.path(), accept=METADATA_ONLY)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply `obj` under the operator's field manager; return the result."""
        return await self._apply(Ref.of(obj).path(), obj)

    async def apply_new(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply `obj` only if no object has its name; else a 409 ApiError.

        The body carries resourceVersion "1", which no stored object has (etcd's revisions
        start above it): the API server ignores it when the apply creates the object and
        checks it as a precondition when the object exists. So a free name is taken in one
        call, with the same field ownership as any apply, and an existing object (someone
        else's, or one of ours the watch has not delivered yet) is left untouched."""
        meta = {**obj["metadata"], "resourceVersion": "1"}
        return await self._apply(Ref.of(obj).path(), {**obj, "metadata": meta})

    async def apply_status(
        self,
        owner: Mapping[str, Any],
        status: Mapping[str, Any],
        manager: str = FIELD_MANAGER,
    ) -> dict[str, Any]:
        """Server-side apply `manager`'s part of an object's status subresource."""
        meta = owner["metadata"]
        body = {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": dict(status),
        }
        return await self._apply(Ref.of(owner).path(subresource="status"), body, manager)

    async def delete(self, ref: Ref, uid: str) -> None:
        """Delete the object if it is still the one with `uid` (never a same-named successor)."""
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        try:
            await self._request("DELETE", ref.path(), body=body)
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request("POST", Ref.of(obj).path(collection=True), body=obj)

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with the object's resourceVersion: a 409 ApiError if someone wrote in between."""
        return await self._request("PUT", Ref.of(obj).path(), body=obj)

    # ----- internals -----
    async def _apply(
        self, path: str, body: Mapping[str, Any], manager: str = FIELD_MANAGER
    ) -> dict[str, Any]:
        return await self._request(
            "PATCH",
            path,
            body=body,
            query=[("fieldManager", manager), ("force", "true")],
            content_type=APPLY_CONTENT,
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any]:
        assert self._pool is not None, "KubeAPI.open() first"
        target = self._prefix + path
        params = list(query)
        if params:
            target += "?" + urlencode(params)
        data = b"" if body is None else orjson.dumps(body)
        head = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self._host_header}",
            f"Accept: {accept}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(data)}",
            "User-Agent: marfleet-operator",
        ]
        token = self.authorization()
        if token:
            head.append(f"Authorization: {token}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data
        try:
            async with self._slots:
                reply = await self._pool.request(request)
                answer = reply.body if reply.stream is None else await _whole(reply.stream)
        except UpstreamError as error:
            raise ApiError(0, error.reason, error.message) from None
        if reply.status >= 400:
            if reply.status == 401:
                self._authorization_until = 0.0  # ask the configuration again next time
            raise api_error(reply.status, _phrase(reply.status), answer)
        parsed: dict[str, Any] = orjson.loads(answer) if answer else {}
        return parsed


IDLE_SECONDS = 30.0
"""An idle connection to the API server is closed after this long (the server's own idle
timeout is longer)."""
MAX_ANSWER_BYTES = 64 << 20
"""The largest answer read from the API server (a LIST page of 500 large objects is far
smaller); beyond it the call fails rather than the operator's memory growing."""


async def _whole(stream: BodyStream) -> bytes:
    """A streamed answer's body (chunked, or longer than MAX_ANSWER_BYTES), up to
    MAX_ANSWER_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            stream.close()
            raise UpstreamError(RESET, f"the API server's answer exceeds {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


def api_error(status: int, reason: str, body: bytes | str | None) -> ApiError:
    message = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    try:
        decoded = json.loads(message)
    except ValueError:
        return ApiError(status, reason, message)
    if not isinstance(decoded, dict):
        return ApiError(status, reason, message)
    causes = tuple(
        str(cause.get("reason", "")) for cause in (decoded.get("details") or {}).get("causes") or []
    )
    return ApiError(status, decoded.get("reason", reason), decoded.get("message", message), causes)
