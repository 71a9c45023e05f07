"""`ModelServer`: the three listeners, the registry and their lifecycle, wired from a config.

    server = ModelServer(config, env=os.environ, key_file=Path("key_file.json"), log=sys.stdout)
    await server.start()          # listening; startup models load in the background
    await server.wait_for_stop()  # until request_stop() (the CLI calls it on SIGTERM)
    await server.shutdown()       # unhealthy, stop accepting, finish in-flight work, stop workers

Nothing here reads globals: the environment, the key-file path and the access-log stream are
passed in, so tests and `marfleet serve` build servers the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal, TextIO
from urllib.parse import parse_qsl

import grpc
from marfleet.runtime.config import CORS_KEYS, ConfigError, ModelSource, ServerConfig
from marfleet.runtime.fdlimit import fit_max_connections
from marfleet.runtime.host_metrics import GpuSampler, HostSampler
from marfleet.runtime.metrics import CONTENT_TYPE, RuntimeMetrics
from marfleet.runtime.server import grpc_api, grpc_listener, grpc_management
from marfleet.runtime.server.auth import Tokens, require_token, token_api
from marfleet.runtime.server.certificates import CertificateError, ServingCertificate
from marfleet.runtime.server.dataplane import DataPlane
from marfleet.runtime.server.errors import ApiError, error_response, json_response, kserve_errors
from marfleet.runtime.server.http import Handler, HttpLimits, HttpServer, Request, Response
from marfleet.runtime.server.inference_api import InferenceApi
from marfleet.runtime.server.logs import AccessLog
from marfleet.runtime.server.management_api import ManagementApi
from marfleet.runtime.server.model_source import ModelLoader, Registration
from marfleet.runtime.server.openapi import MODEL_PARAMETER, describe, describe_model
from marfleet.runtime.server.routing import Router
from marfleet.runtime.workers.placement import RoundRobin, installed_gpu_count, visible_gpu_count
from marfleet.runtime.workers.registry import ModelRegistry, WorkerEnvironment

log = logging.getLogger("marfleet.server")

ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz", ".zip")
STARTUP_RETRY_MAX_S = 60.0  # the longest wait between tries of a required startup model
LoadOutcome = Literal["loaded", "refused", "failed"]  # refused: 4xx, trying again cannot help


def server_version() -> str:
    try:
        return version("marfleet")
    except PackageNotFoundError:
        return "0+unknown"


def http_limits(config: ServerConfig) -> HttpLimits:
    """The request-side limits every listener enforces, from their config keys."""
    return HttpLimits(
        max_body_bytes=config.max_request_size,
        max_head_bytes=config.max_request_head_size,
        head_timeout=config.request_head_timeout_seconds,
        body_timeout=config.request_body_timeout_seconds,
        keepalive_timeout=config.keepalive_timeout_seconds,
        max_connections=config.max_connections,
        max_buffered_body_bytes=config.max_buffered_request_size,
    )


NO_CACHE_HEADERS = {
    "Pragma": "no-cache",
    "Cache-Control": "no-cache, no-store, must-revalidate, private",
    "Expires": "Thu, 01 Jan 1970 00:00:00 UTC",
}
"""On every answer, as TorchServe sends them: no browser or proxy keeps a copy."""


def response_headers(config: ServerConfig) -> dict[str, str]:
    """The headers every answer of the three ports carries: TorchServe's no-cache headers and
    the CORS headers config.properties sets (cors_allowed_origin, _methods, _headers)."""
    cors = {header: getattr(config, key) for key, header in CORS_KEYS.items()}
    return {**NO_CACHE_HEADERS, **{name: value for name, value in cors.items() if value}}


def _render_error(status: int, message: str) -> Response:
    return error_response(status, message)


def _api_errors(app: Handler) -> Handler:
    async def handle(request: Request) -> Response:
        try:
            return await app(request)
        except ApiError as error:
            return error.response()

    return handle


def serving_certificate(config: ServerConfig) -> ServingCertificate | None:
    """The certificate of the https:// listeners and of gRPC with enable_grpc_ssl
    (TorchServe's certificate_file and private_key_file, PEM); None when nothing asks for TLS."""
    addresses = (config.inference_address, config.management_address, config.metrics_address)
    if not config.enable_grpc_ssl and not any(address.tls for address in addresses):
        return None
    if config.certificate_file is None or config.private_key_file is None:
        raise ConfigError(
            "an https:// address or enable_grpc_ssl=true asks for TLS: set certificate_file "
            "and private_key_file (PEM files of the certificate chain and its private key)"
        )
    try:
        return ServingCertificate(config.certificate_file, config.private_key_file)
    except CertificateError as error:
        raise ConfigError(str(error)) from None


class ModelServer:
    def __init__(
        self,
        config: ServerConfig,
        *,
        env: Mapping[str, str],
        key_file: Path,
        log_stream: TextIO,
    ) -> None:
        self.config = config
        self._env = env
        self._key_file = key_file
        self._log_stream = log_stream
        self.version = server_version()
        self.metrics = RuntimeMetrics(
            variant=env.get("MARFLEET_VARIANT", ""),
            hostname=socket.gethostname(),
            host=HostSampler(Path.cwd()),
            config=config.metrics,
        )
        self.gpu_count = visible_gpu_count(env, installed_gpu_count(), config.number_of_gpu)
        self._gpus = GpuSampler() if self.gpu_count else None  # TorchServe's GPU metrics
        self._gpu_query = asyncio.Lock()
        self.registry = ModelRegistry(
            metrics=self.metrics,
            workers=WorkerEnvironment(
                threads=config.worker_threads,
                env={},
                stop_grace_s=config.shutdown_grace_seconds,
                envelope=config.service_envelope,
            ),
            round_robin=RoundRobin(),
        )
        self._extract_root = Path(tempfile.mkdtemp(prefix="marfleet-models-"))
        self.loader = ModelLoader(
            config, self.registry, gpu_count=self.gpu_count, extract_root=self._extract_root
        )
        self.plane = DataPlane(
            self.registry,
            max_response_bytes=config.max_response_size,
            is_healthy=self.healthy,
            server_version=self.version,
            max_json_depth=config.max_json_depth,
            envelope=config.service_envelope,
        )
        self._servers: dict[str, HttpServer] = {}
        self._startup_done = False
        self._missing: set[ModelSource] = set()  # required startup models not serving yet
        self._draining = False
        self._stop = asyncio.Event()
        self._startup_task: asyncio.Task[None] | None = None
        self._certificate_task: asyncio.Task[None] | None = None
        self._grpc: dict[str, tuple[grpc.aio.Server, int]] = {}  # name -> (server, port)
        self._management = ManagementApi(
            self.registry,
            self.loader,
            self.plane.handler_description,
            enable_model_api=config.enable_model_api,
        )

    # health

    def healthy(self) -> bool:
        return (
            self._startup_done
            and not self._missing
            and not self._draining
            and self.registry.healthy()
        )

    # lifecycle

    async def start(self) -> None:
        config = self.config
        limits = http_limits(config)
        listeners = 3 + bool(config.grpc_inference_port) + bool(config.grpc_management_port)
        fitted = fit_max_connections(limits.max_connections, listeners, log)
        limits = dataclasses.replace(limits, max_connections=fitted)
        grpc_limits = grpc_listener.GrpcLimits.of(
            limits,
            max_send_bytes=config.max_response_size,
            keepalive=config.grpc_keepalive_seconds,
            max_age=config.grpc_max_connection_age_seconds,
            bound_streams=True,
        )
        certificate = serving_certificate(config)
        tls = certificate.context if certificate is not None else None
        if not config.disable_token_authorization:
            self.plane.tokens = Tokens(
                self._key_file,
                lifetime_s=config.token_expiration_min * 60.0,
                guard_inference=not config.disable_inference_token_authorization,
            )
        inference = self._api_router(
            "TorchServe inference API", "RESTful API for: ", self._inference_routes
        )
        management = self._api_router(
            "TorchServe management API", "RESTful Management API for: ", self._management_routes
        )
        if self.plane.tokens is not None:
            inference = require_token(self.plane.authorize, "inference", inference)
            management = require_token(self.plane.authorize, "management", management)
        inference = kserve_errors(inference)
        metrics = Router(_render_error)
        metrics.add("GET", "/metrics", self._metrics, "Prometheus metrics.")
        for name, app, address in (
            ("inference", inference, config.inference_address),
            ("management", management, config.management_address),
            ("metrics", _api_errors(metrics), config.metrics_address),
        ):
            server = HttpServer(
                app,
                limits,
                error_response=_render_error,
                on_complete=self._completion_hook(name),
                on_unhandled=self._log_unhandled,
                extra_headers=response_headers(config),
                request_ids=True,
            )
            await server.start(address.host, address.port, tls=tls if address.tls else None)
            self._servers[name] = server
        for name, handlers, host, port in (
            (
                "grpc_inference",
                grpc_api.inference_handlers(self.plane),
                config.inference_address.host,
                config.grpc_inference_port,
            ),
            (
                "grpc_management",
                [grpc_management.Management(self._management, self.plane.authorize).handler()],
                config.management_address.host,
                config.grpc_management_port,
            ),
        ):
            if port:
                self._grpc[name] = await grpc_listener.start_server(
                    handlers,
                    host,
                    port,
                    grpc_limits,
                    credentials=certificate.grpc_credentials()
                    if certificate is not None and config.enable_grpc_ssl
                    else None,
                )
        log.info(
            "listening",
            extra={
                **{name: server.port for name, server in self._servers.items()},
                **{name: port for name, (_, port) in self._grpc.items()},
                "gpus": self.gpu_count,
                "token_authorization": self.plane.tokens is not None,
            },
        )
        self._startup_task = asyncio.get_running_loop().create_task(self._load_startup_models())
        if certificate is not None:
            self._certificate_task = asyncio.get_running_loop().create_task(
                certificate.watch(config.certificate_reload_interval_seconds)
            )

    def port(self, name: str) -> int:
        if name in self._grpc:
            return self._grpc[name][1]
        return self._servers[name].port

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_for_stop(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Report unhealthy, stop accepting, finish in-flight work within the grace period."""
        grace = self.config.shutdown_grace_seconds
        started = time.monotonic()
        self._draining = True
        log.info("shutting down", extra={"grace_seconds": grace})
        for task in (self._startup_task, self._certificate_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        front = [self._servers[n] for n in ("inference", "management") if n in self._servers]
        for server in front:
            server.begin_shutdown()
        for grpc_server, _ in self._grpc.values():
            await grpc_server.stop(max(0.0, grace - (time.monotonic() - started)))
        for server in front:
            await server.wait_closed(max(0.0, grace - (time.monotonic() - started)))
        await self.registry.shutdown(drain_timeout=max(0.0, grace - (time.monotonic() - started)))
        if "metrics" in self._servers:
            self._servers["metrics"].begin_shutdown()
            await self._servers["metrics"].wait_closed(1.0)
        self.loader.close()
        shutil.rmtree(self._extract_root, ignore_errors=True)
        log.info("stopped", extra={"seconds": round(time.monotonic() - started, 3)})

    # wiring

    def _api_router(
        self, title: str, model_title: str, add_routes: Callable[[Router], None]
    ) -> Handler:
        """The port's routes, its OpenAPI description (`OPTIONS /`, `/api-description`) and,
        at `OPTIONS` on each of a model's paths, that model's part of it (404 for a model or
        version that is not registered), as TorchServe answers them."""
        router = Router(_render_error)
        add_routes(router)

        async def description(request: Request) -> Response:
            return json_response(describe(router, title=title, version=self.version))

        async def model_description(request: Request) -> Response:
            name = request.params["model_name"]
            self.plane.model(name, request.params.get("model_version"))
            described = describe_model(router, name, title=model_title + name, version=self.version)
            return json_response(described)

        # in the table's order: `/v1/models/{model_name}:predict` before the pattern that
        # would also match it, `/v1/models/{model_name}`
        patterns = [pattern for pattern, _, _ in router.documented if MODEL_PARAMETER in pattern]
        for pattern in dict.fromkeys(patterns):
            router.add("OPTIONS", pattern, model_description, "This model's OpenAPI description.")
        router.add("OPTIONS", "/", description, "This OpenAPI description.")
        router.add("GET", "/api-description", description, "This OpenAPI description.")
        return _api_errors(router)

    def _inference_routes(self, router: Router) -> None:
        InferenceApi(self.plane).routes(router)

    def _management_routes(self, router: Router) -> None:
        self._management.routes(router)
        if self.plane.tokens is not None:
            summary = "A new management or inference key (?type=), with the API key."
            router.add("GET", "/token", token_api(self.plane.tokens), summary)

    async def _metrics(self, request: Request) -> Response:
        if self._gpus is not None:
            async with self._gpu_query:  # one nvidia-smi at a time, off the event loop
                self.metrics.record_gpus(await asyncio.to_thread(self._gpus.sample))
        query = parse_qsl(request.query_string, keep_blank_values=True)
        names = [value for key, value in query if key == "name[]"]
        only = frozenset(names) if names else None  # TorchServe's filter: ?name[]=a&name[]=b
        return Response(200, self.metrics.registry.render(only), CONTENT_TYPE)

    def _completion_hook(self, name: str) -> AccessLog:
        count = self.metrics.count_status if name != "metrics" else None  # every API, as TS
        return AccessLog(self._log_stream, name, on_status=count)

    @staticmethod
    def _log_unhandled(request: Request, error: Exception) -> None:
        log.error(
            "unhandled error",
            exc_info=error,
            extra={"method": request.method, "path": request.path},
        )

    async def _load_startup_models(self) -> None:
        """Load every startup model; /ping turns healthy once the first try of each is over.

        One that cannot load is logged and skipped, as TorchServe's frontend stays up without
        it. With `require_startup_models` (the operator's pods, which exist for their one
        model), every model named (not found by `load_models=all`) must serve first: one
        whose workers fail to load is tried again with backoff until it loads, one refused
        outright (not an archive, a bad manifest) stays missing, and /ping is unhealthy
        meanwhile, so a pod that cannot serve its model takes no traffic, its load failures
        are counted where the alert sees them, and it heals when the cause goes away.
        """
        sources = self._startup_sources()
        retried: list[ModelSource] = []
        try:
            outcomes = await asyncio.gather(*(self._load_one(source) for source, _ in sources))
            if self.config.require_startup_models:
                self._missing = {
                    source
                    for (source, named), outcome in zip(sources, outcomes, strict=True)
                    if named and outcome != "loaded"
                }
                retried = [
                    source
                    for (source, _), outcome in zip(sources, outcomes, strict=True)
                    if source in self._missing and outcome == "failed"
                ]
        finally:
            self._startup_done = True
        if self._missing:
            log.error(
                "required startup models are not serving: /ping is unhealthy until they are",
                extra={"urls": sorted(source.url for source in self._missing)},
            )
            await asyncio.gather(*(self._load_until_serving(source) for source in retried))

    async def _load_until_serving(self, source: ModelSource) -> None:
        """Try a required model again, waiting 1, 2, 4 ... up to 60 s between tries."""
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            outcome = await self._load_one(source, retrying=True)
            if outcome != "failed":
                break
            delay = min(delay * 2, STARTUP_RETRY_MAX_S)
            log.warning(
                "required startup model failed to load; trying again",
                extra={"url": source.url, "retry_in_s": delay},
            )
        if outcome == "loaded":
            self._missing.discard(source)

    def _startup_sources(self) -> list[tuple[ModelSource, bool]]:
        """Each startup model, and whether it was named (False: found by `all`)."""
        config = self.config
        sources = [(source, True) for source in config.load_models]
        for name, versions in config.models.items():
            for settings in versions.values():
                mar = settings.get("marName")
                if isinstance(mar, str):
                    sources.append((ModelSource(url=mar, name=name), True))
        if config.load_all_models and config.model_store is not None:
            sources += [
                (ModelSource(url=path.name), False)
                for path in sorted(config.model_store.iterdir())
                if path.name.endswith(ARCHIVE_SUFFIXES)
            ]
        # An archive both listed (load_models, `all`) and named in the models JSON is one model.
        named = {source.url for source, _ in sources if source.name is not None}
        unique: dict[tuple[str | None, str], tuple[ModelSource, bool]] = {}
        for source, required in sources:
            if source.name is not None or source.url not in named:
                unique.setdefault((source.name, source.url), (source, required))
        return list(unique.values())

    async def _load_one(self, source: ModelSource, *, retrying: bool = False) -> LoadOutcome:
        registration = Registration(
            source.url, source.name, {}, synchronous=True, loaded_at_startup=True
        )
        try:
            entry, workers = await self.loader.register(registration)
        except ApiError as error:
            if retrying and error.status == 409:  # registered meanwhile through the API
                return "loaded"
            log.error(
                "model refused at startup",
                extra={"url": source.url, "status": error.status, "reason": error.message},
            )
            return "failed" if error.status >= 500 else "refused"
        except Exception as error:  # one bad archive must not stop the others
            log.error("model failed at startup", exc_info=error, extra={"url": source.url})
            return "failed"
        log.info(
            "model registered",
            extra={"model": entry.name, "version": entry.version, "workers": workers},
        )
        return "loaded"
