"""List and watch the resources the operator follows, and hand every object to the controller.

The controller needs only "this object now looks like this" and "this object is gone", in
order per object, after a complete first list. That is what a Kubernetes informer does, and
all this module does: per resource (and per namespace when the operator serves a few), list
in pages, then watch from the list's resourceVersion with bookmarks; when the watch times out,
watch on from the last version seen; when the API server answers 410 Gone (the version is too
old), list again and report the objects that vanished meanwhile as deleted. Each event is one
decoding (orjson) and one call; nothing is kept per object beyond what a relist needs to
report a deletion. (kopf did this before, at several times the CPU per event: a task per object,
handler arguments, progress bookkeeping the operator never used; docs/scale.md.)

A resource the API server does not serve (the CRD of an add-on that is not installed) is
asked for again with backoff, so its watch starts once the add-on is installed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from .kube import ApiError, Credentials, api_error, ssl_context

log = logging.getLogger("marfleet.operator.watch")

Handler = Callable[[str, dict[str, Any]], None]
"""(ADDED | MODIFIED | DELETED, object) -> None, called on the event loop."""

PAGE_SIZE = 500
WATCH_SECONDS = 300
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
READ_BUFFER = 8 << 20
"""The longest watch event line accepted (one object; a CRD can be hundreds of KiB)."""


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    label_selector: str = ""
    field_selector: str = ""
    cluster_scoped: bool = False
    addon: bool = False
    """An add-on's kind (KEDA, Prometheus Operator): the chart grants rights on it only where
    its API exists, so a 403 means the same as a 404: not here (yet)."""

    def path(self, namespace: str) -> str:
        group = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{namespace}" if namespace and not self.cluster_scoped else ""
        return f"{group}{scope}/{self.plural}"


class Session:
    """One aiohttp session to the API server with the operator's credentials, for the watches'
    long-lived requests (apart from KubeAPI's pool, which they would otherwise hold)."""

    def __init__(self, credentials: Callable[[], Credentials]) -> None:
        self._credentials = credentials
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    async def open(self) -> None:
        creds = self._credentials()
        self._server = creds.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context(creds), limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=READ_BUFFER,
            max_line_size=READ_BUFFER,
            max_field_size=READ_BUFFER,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def headers(self) -> dict[str, str]:
        creds = self._credentials()  # a refreshed token, when the configuration refreshes one
        headers = {"Accept": "application/json"}
        if creds.token:
            headers["Authorization"] = f"{creds.scheme or 'Bearer'} {creds.token}"
        return headers

    def get(self, path: str, params: dict[str, str], timeout: float) -> Any:
        assert self._session is not None, "Session.open() first"
        url = f"{self._server}{path}?{urlencode(params)}"
        return self._session.get(
            url,
            headers=self.headers(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout),
        )


class Watch:
    """One resource in one namespace ("" = all namespaces, or a cluster-scoped resource)."""

    def __init__(
        self,
        session: Session,
        resource: Resource,
        namespace: str,
        handler: Handler,
        *,
        page_size: int = PAGE_SIZE,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self.session = session
        self.resource = resource
        self.namespace = namespace
        self.handler = handler
        self.page_size = page_size
        self.watch_seconds = watch_seconds
        self.synced = asyncio.Event()
        """Set once the first complete list has been handed over."""
        self._known: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def name(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.resource.plural}{where}"

    async def run(self) -> None:
        """List and watch until cancelled."""
        backoff = FIRST_BACKOFF
        absent = False
        while True:
            try:
                version = await self._list()
                if absent:
                    log.info("watching resumed", extra={"resource": self.name})
                absent = False
                self.synced.set()
                while version:
                    version = await self._watch(version)
                backoff = FIRST_BACKOFF
                continue  # 410 Gone: list again at once
            except ApiError as error:
                if error.status == 404 or (error.status == 403 and self.resource.addon):
                    # not served (yet): an add-on's CRD that is not installed, or (403) not
                    # granted because it was not installed when the chart was
                    if not absent:
                        log.info(
                            "resource not served or not granted; asking again",
                            extra={"resource": self.name, "status": error.status},
                        )
                    absent = True
                    self.synced.set()  # nothing to wait for
                else:
                    log.warning("watch failed", extra={"resource": self.name, "error": str(error)})
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                log.warning(
                    "watch interrupted",
                    extra={"resource": self.name, "error": f"{type(error).__name__}: {error}"},
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _list(self) -> str:
        params = self._selectors()
        params["limit"] = str(self.page_size)
        seen: set[tuple[str, str]] = set()
        version = ""
        while True:
            async with self.session.get(
                self.resource.path(self.namespace), params, timeout=60
            ) as response:
                page = await _json(response)
            meta = page.get("metadata") or {}
            version = str(meta.get("resourceVersion", ""))
            for obj in page.get("items") or []:
                obj.setdefault("apiVersion", self.resource.api_version)
                obj.setdefault("kind", self.resource.kind)
                seen.add(self._remember(obj))
                self.handler("ADDED", obj)
            if not meta.get("continue"):
                break
            params["continue"] = str(meta["continue"])
        for key in [k for k in self._known if k not in seen]:
            self.handler("DELETED", self._known.pop(key))
        return version

    async def _watch(self, version: str) -> str:
        """Watch from `version`; return the version to watch on from, or "" to list again."""
        params = self._selectors()
        params.update(
            watch="true",
            resourceVersion=version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(self.watch_seconds),
        )
        async with self.session.get(
            self.resource.path(self.namespace), params, timeout=self.watch_seconds + 30
        ) as response:
            if response.status >= 400:
                await _json(response)  # raises
            async for line in response.content:
                if not line.strip():
                    continue
                event = orjson.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return ""
                    raise ApiError(
                        int(obj.get("code") or 0), str(obj.get("reason")), str(obj.get("message"))
                    )
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                obj.setdefault("apiVersion", self.resource.api_version)
                obj.setdefault("kind", self.resource.kind)
                if kind == "DELETED":
                    self._known.pop(_key(obj), None)
                else:
                    self._remember(obj)
                self.handler(str(kind), obj)
        return version

    def _selectors(self) -> dict[str, str]:
        params = {}
        if self.resource.label_selector:
            params["labelSelector"] = self.resource.label_selector
        if self.resource.field_selector:
            params["fieldSelector"] = self.resource.field_selector
        return params

    def _remember(self, obj: dict[str, Any]) -> tuple[str, str]:
        """Keep what a later relist needs to report this object deleted: its identity."""
        meta = obj["metadata"]
        key = _key(obj)
        self._known[key] = {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "metadata": {
                "name": meta["name"],
                "namespace": meta.get("namespace", ""),
                "uid": meta.get("uid", ""),
                "labels": meta.get("labels") or {},
            },
        }
        return key


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await response.read()
    if response.status >= 400:
        raise api_error(response.status, response.reason or "", body)
    parsed: dict[str, Any] = orjson.loads(body)
    return parsed
