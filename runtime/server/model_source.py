"""Registering a model: from a `url` (store file, allowed URL) to running workers.

Shared by the management API's `POST /models` and by `load_models` at startup, so both
refuse the same things with TorchServe's statuses: a URL outside `allowed_urls` or a missing
file (404), a download that fails (400), an archive the archive module refuses (400), bad
model-config.yaml or deviceIds (400), a version already registered (409), workers that cannot
load the model (500, and the version is not kept).
"""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marfleet.runtime.archive.errors import ArchiveError
from marfleet.runtime.archive.extract import ExtractionLimits
from marfleet.runtime.archive.manifest import validate_model_name, validate_model_version
from marfleet.runtime.archive.model_config import read_model_config
from marfleet.runtime.archive.reader import ModelArchive, load_archive
from marfleet.runtime.config import ConfigError, ServerConfig, resolve_model_settings
from marfleet.runtime.server import kserve_v2
from marfleet.runtime.server.errors import ApiError
from marfleet.runtime.storage.fetch import FetchError, FetchSettings, fetch
from marfleet.runtime.workers.placement import (
    available_cores,
    default_worker_count,
    model_devices,
)
from marfleet.runtime.workers.registry import AlreadyRegistered, ModelRegistry, ModelVersion

WORKERS_PER_CORE = 2  # the default max_workers_per_model: this many per CPU core, or per device
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Registration:
    url: str
    model_name: str | None
    api: Mapping[str, str]  # batch_size, max_batch_delay, initial_workers, *_timeout
    synchronous: bool
    loaded_at_startup: bool = False
    handler: str | None = None  # instead of the manifest's (TorchServe's `handler` parameter)


class ModelLoader:
    def __init__(
        self,
        config: ServerConfig,
        registry: ModelRegistry,
        *,
        gpu_count: int,
        extract_root: Path,
    ) -> None:
        self._config = config
        self._registry = registry
        self._gpu_count = gpu_count
        self._extract_root = extract_root
        self._downloads = 0
        self._download_threads = ThreadPoolExecutor(
            config.max_concurrent_downloads, thread_name_prefix="marfleet-download"
        )
        self._cancel_downloads: set[threading.Event] = set()

    async def register(self, registration: Registration) -> tuple[ModelVersion, int]:
        """Register; returns the new version and how many workers it was given.

        All or nothing: on any failure, and when the caller is cancelled (the client went
        away), what was unpacked is removed and the version is not registered. A downloaded
        archive is removed once unpacked, whatever happens: the model store is never written.
        """
        source, downloaded = await self._locate(registration.url)
        target = self._extract_root / uuid.uuid4().hex
        limits = ExtractionLimits(max_total_bytes=self._config.max_model_unpacked_size)
        unpacking = asyncio.ensure_future(asyncio.to_thread(load_archive, source, target, limits))
        if downloaded is not None:
            unpacking.add_done_callback(lambda _: _remove_tree(downloaded))
        try:
            archive = await asyncio.shield(unpacking)
        except asyncio.CancelledError:
            # the thread cannot be stopped: remove what it unpacked once it is done
            unpacking.add_done_callback(lambda _: _remove_tree(target))
            raise
        except ArchiveError as error:
            await asyncio.to_thread(_remove_tree, target)  # a bad manifest is found after unpacking
            raise ApiError(400, f"Invalid model archive {registration.url}: {error}") from None
        except Exception:
            await asyncio.to_thread(_remove_tree, target)
            raise
        cleanup = target if target.exists() else None
        try:
            return await self._add(registration, archive, cleanup)
        except BaseException:
            if cleanup is not None:
                _remove_tree(cleanup)
            raise

    def check_workers(self, count: int, what: str) -> None:
        """Refuse (400) a worker count above `max_workers_per_model`; `what` names its source."""
        limit = self.max_workers_per_model
        if count > limit:
            raise ApiError(
                400,
                f"{what}={count} exceeds this server's limit of {limit} workers per model "
                "(max_workers_per_model); ask for fewer workers or raise the limit",
            )

    @property
    def max_workers_per_model(self) -> int:
        configured = self._config.max_workers_per_model
        if configured is not None:
            return configured
        devices = max(1, self._gpu_count) * self._config.workers_per_device
        return max(devices, WORKERS_PER_CORE * available_cores())

    async def _add(
        self, registration: Registration, archive: ModelArchive, cleanup: Path | None
    ) -> tuple[ModelVersion, int]:
        manifest = archive.manifest
        name = registration.model_name or manifest.model_name
        version = manifest.model_version
        try:
            validate_model_name(name)
            validate_model_version(version)
        except ArchiveError as error:
            raise ApiError(400, str(error)) from None
        config = self._config
        properties_model = config.models.get(name, {}).get(version, {})
        try:
            model_yaml = _model_yaml(archive)
            settings = resolve_model_settings(
                config,
                default_workers=self._default_workers(registration),
                properties_model=properties_model,
                model_yaml=model_yaml,
                api=registration.api,
            )
            devices = model_devices(self._gpu_count, settings.device_type, settings.device_ids)
            tensors = kserve_v2.declared_tensors(model_yaml)
        except (ConfigError, ValueError) as error:
            raise ApiError(400, f"Model {name!r} version {version}: {error}") from None
        self.check_workers(settings.min_workers, "minWorkers (initial_workers)")
        self.check_workers(settings.max_workers, "maxWorkers")
        try:
            errors = await self._registry.add(
                name=name,
                version=version,
                url=registration.url,
                model_dir=archive.model_dir,
                manifest=manifest.raw,
                settings=settings,
                devices=devices,
                loaded_at_startup=registration.loaded_at_startup,
                cleanup_dir=cleanup,
                wait=registration.synchronous,
                handler=registration.handler,
                tensors=tensors,
            )
        except AlreadyRegistered as error:
            raise ApiError(409, str(error), type="ConflictStatusException") from None
        if errors:
            raise ApiError(
                500,
                f'Failed to start workers for model "{name}" version {version}: {errors[0]}',
            )
        if str(properties_model.get("defaultVersion", "")).lower() == "true":
            self._registry.set_default(name, version)  # config.properties' models JSON says so
        return self._registry.get(name, version), settings.min_workers

    def _default_workers(self, registration: Registration) -> int:
        """Workers when nothing names a number: at start-up marfleet's default (one per device
        or pod); through the API TorchServe's (`default_workers_per_model`, else none)."""
        config = self._config
        if registration.loaded_at_startup:
            return default_worker_count(
                self._gpu_count, config.workers_per_device, config.default_workers_per_model
            )
        return config.default_workers_per_model or 0

    async def _locate(self, url: str) -> tuple[Path, Path | None]:
        """The local archive `url` names, and the private folder an allowed remote URL was
        downloaded into (to remove once unpacked; None for a file of the store or file://)."""
        if _URL_SCHEME.match(url):
            if not any(re.fullmatch(pattern, url) for pattern in self._config.allowed_urls):
                raise ApiError(
                    404,
                    f"Given URL {url} does not match any allowed URL(s)",
                    type="ModelNotFoundException",
                )
            if url.startswith("file://"):
                return self._existing(Path(url[len("file://") :]), url), None
            if not url.startswith(("http://", "https://")):
                raise ApiError(404, f"Model not found at: {url}", type="ModelNotFoundException")
            return await self._download(url)
        store = self._config.model_store
        if store is None:
            raise ApiError(
                404,
                f"Model not found at: {url} (no model store is configured: start the server "
                "with --model-store DIR)",
                type="ModelNotFoundException",
            )
        path = (store / url).resolve()
        if not path.is_relative_to(store.resolve()):
            raise ApiError(400, f"Model url {url!r} points outside the model store")
        return self._existing(path, url), None

    @staticmethod
    def _existing(path: Path, url: str) -> Path:
        if not path.exists():
            raise ApiError(404, f"Model not found at: {url}", type="ModelNotFoundException")
        return path

    async def _download(self, url: str) -> tuple[Path, Path]:
        """Fetch `url` with `marfleet fetch`'s downloader, within limits, into a folder of its
        own beside the unpacked models; returns the archive and that folder.

        Every registration downloads afresh: a file of the same name from another URL, or
        from an earlier registration, is never taken for it, and nothing lands in the model
        store (TorchServe keeps the download there until the model is unregistered).
        At most `max_concurrent_downloads` run at once, on their own threads (a trickling
        server cannot take the threads extraction and other work use); one more is a 503.
        Each has a size cap, an overall deadline and a stall timeout, and stops when the
        registering client goes away; a download that does not complete leaves nothing.
        """
        config = self._config
        if self._downloads >= config.max_concurrent_downloads:
            raise ApiError(
                503,
                f"{self._downloads} archive downloads are in progress "
                "(max_concurrent_downloads); retry later",
                headers={"Retry-After": "1"},
            )
        cancelled = threading.Event()
        settings = FetchSettings(
            attempts=1,
            timeout_seconds=config.download_stall_timeout_seconds,
            stall_seconds=config.download_stall_timeout_seconds,
            deadline_seconds=config.download_timeout_seconds,
            max_bytes=config.max_download_size,
            cancelled=cancelled.is_set,
        )
        folder = self._extract_root / f"download-{uuid.uuid4().hex}"
        self._downloads += 1
        download = asyncio.get_running_loop().run_in_executor(
            self._download_threads,
            functools.partial(fetch, url, folder, sha256=None, settings=settings, report=_quiet),
        )
        download.add_done_callback(self._download_finished)  # when the thread is really done
        self._cancel_downloads.add(cancelled)
        try:
            return await asyncio.shield(download), folder
        except asyncio.CancelledError:
            cancelled.set()  # the client went away: the thread stops at its next read
            download.add_done_callback(lambda _: _remove_tree(folder))
            raise
        except (FetchError, ValueError, OSError) as error:
            _remove_tree(folder)
            raise ApiError(
                400,
                f"Failed to download archive from: {url} ({error})",
                type="DownloadArchiveException",
            ) from None
        except BaseException:
            _remove_tree(folder)
            raise
        finally:
            self._cancel_downloads.discard(cancelled)

    def _download_finished(self, _: object) -> None:
        self._downloads -= 1

    def close(self) -> None:
        """Stop downloads in progress (server shutdown)."""
        for cancelled in list(self._cancel_downloads):
            cancelled.set()
        self._download_threads.shutdown(wait=False, cancel_futures=True)


def _quiet(_event: str, _fields: dict[str, Any]) -> None:
    """Registration reports failures in its answer, not as fetch events."""


def _model_yaml(archive: ModelArchive) -> dict[str, Any]:
    config_file = archive.manifest.config_file
    if not config_file:
        return {}
    try:
        return read_model_config(archive.model_dir, config_file)
    except ArchiveError as error:
        raise ConfigError(str(error)) from None


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
