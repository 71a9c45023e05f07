"""Server and per-model settings: TorchServe's config.properties, TS_* variables, model-config.yaml.

TorchServe users carry a config.properties and per-archive model-config.yaml files; marfleet
reads both with the same keys. Everything here is pure (text and mappings in, frozen
dataclasses out) so that precedence can be tested without a server:

    API parameters > the MAR's model-config.yaml > config.properties (incl. its `models` JSON)
    > defaults

and, for server keys, `TS_<KEY>` environment variables override the file when
`enable_envvars_config=true`, as in TorchServe. Keys marfleet does not use are collected in
`ServerConfig.ignored_keys` so the caller can report them; they never stop the server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from marfleet.runtime.metrics_config import MetricsConfig

DEFAULT_STARTUP_TIMEOUT_S = 120  # TorchServe's startupTimeout: how long a worker may load


class ConfigError(ValueError):
    """A setting has a value marfleet cannot use; the message names the key and the fix."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    tls: bool = False  # https://: served with certificate_file and private_key_file

    @classmethod
    def parse(cls, key: str, value: str) -> Address:
        match = re.fullmatch(r"(?:(https?)://)?(\[[^\]]+\]|[^:/]+):(\d+)/?", value.strip())
        if match is None:
            raise ConfigError(
                f"{key}={value!r}: expected http://HOST:PORT, e.g. http://0.0.0.0:8080"
            )
        return cls(match.group(2).strip("[]"), int(match.group(3)), match.group(1) == "https")


@dataclass(frozen=True)
class ModelSource:
    """One entry of load_models / --models: an archive in the store or a URL, maybe renamed."""

    url: str
    name: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    inference_address: Address = Address("127.0.0.1", 8080)
    management_address: Address = Address("127.0.0.1", 8081)
    metrics_address: Address = Address("127.0.0.1", 8082)
    model_store: Path | None = None
    load_models: tuple[ModelSource, ...] = ()
    load_all_models: bool = False
    models: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    job_queue_size: int = 100
    default_workers_per_model: int | None = None
    number_of_gpu: int | None = None
    batch_size: int = 1
    max_batch_delay: int = 100
    max_request_size: int = 6553500
    max_response_size: int = 6553500
    default_response_timeout: int = 120
    allowed_urls: tuple[str, ...] = (r"file://.*|http(s)?://.*",)
    disable_token_authorization: bool = False
    token_expiration_min: int = 60
    enable_model_api: bool = False
    enable_envvars_config: bool = False
    service_envelope: str = ""  # TorchServe's request envelope for every model ("": none)
    metrics_config: Path | None = None  # TorchServe's metrics.yaml (None: its default)
    model_metrics_auto_detect: bool = False  # export handler metrics metrics_config lacks
    metrics: MetricsConfig | None = None  # metrics_config as read (serve_cli), None: default
    # marfleet's own keys
    workers_per_device: int = 1
    worker_threads: int = 1
    shutdown_grace_seconds: float = 30.0
    require_startup_models: bool = False  # /ping waits for every named startup model
    # request-side limits of every listener (docs/operations.md)
    max_request_head_size: int = 64 * 1024
    request_head_timeout_seconds: float = 10.0
    request_body_timeout_seconds: float = 30.0
    keepalive_timeout_seconds: float = 75.0
    max_connections: int = 1000
    max_buffered_request_size: int = 512 * 1024 * 1024
    max_json_depth: int = 64
    disable_inference_token_authorization: bool = False
    # gRPC (TorchServe's key; 0 = no gRPC listener, see docs/runtime-api.md)
    grpc_inference_port: int = 0
    grpc_management_port: int = 0
    grpc_keepalive_seconds: float = 60.0  # a silent connection is pinged (grpc_listener.py)
    grpc_max_connection_age_seconds: float = 300.0  # then GOAWAY, as long again for its calls
    # TLS (TorchServe's keys): https:// addresses and enable_grpc_ssl use this pair of PEM files
    certificate_file: Path | None = None
    private_key_file: Path | None = None
    enable_grpc_ssl: bool = False
    certificate_reload_interval_seconds: float = 30.0  # the pair is read again this often
    # model lifecycle limits (docs/operations.md)
    max_workers_per_model: int | None = None  # None: 2 per CPU core, or devices x per device
    max_model_unpacked_size: int = 64 * 1024**3
    # registration by URL (docs/operations.md)
    max_download_size: int = 20 * 1024**3
    download_timeout_seconds: float = 600.0
    download_stall_timeout_seconds: float = 30.0
    max_concurrent_downloads: int = 4
    # CORS (TorchServe's keys): each one set is sent as its header on every answer
    cors_allowed_origin: str = ""
    cors_allowed_methods: str = ""
    cors_allowed_headers: str = ""
    ignored_keys: tuple[str, ...] = ()


_INT_KEYS = {
    "job_queue_size",
    "batch_size",
    "max_batch_delay",
    "max_request_size",
    "max_response_size",
    "default_response_timeout",
    "workers_per_device",
    "worker_threads",
    "token_expiration_min",
    "max_request_head_size",
    "max_connections",
    "max_buffered_request_size",
    "max_json_depth",
    "grpc_inference_port",
    "grpc_management_port",
    "max_model_unpacked_size",
    "max_download_size",
    "max_concurrent_downloads",
}
_FLOAT_KEYS = {
    "shutdown_grace_seconds",
    "request_head_timeout_seconds",
    "request_body_timeout_seconds",
    "keepalive_timeout_seconds",
    "download_timeout_seconds",
    "download_stall_timeout_seconds",
    "certificate_reload_interval_seconds",
    "grpc_keepalive_seconds",
    "grpc_max_connection_age_seconds",
}
_OPTIONAL_INT_KEYS = {"default_workers_per_model", "number_of_gpu", "max_workers_per_model"}
_BOOL_KEYS = {
    "disable_token_authorization",
    "disable_inference_token_authorization",
    "enable_model_api",
    "enable_envvars_config",
    "enable_grpc_ssl",
    "model_metrics_auto_detect",
    "require_startup_models",
}
_ADDRESS_KEYS = {"inference_address", "management_address", "metrics_address"}
CORS_KEYS = {
    "cors_allowed_origin": "Access-Control-Allow-Origin",
    "cors_allowed_methods": "Access-Control-Allow-Methods",
    "cors_allowed_headers": "Access-Control-Allow-Headers",
}
"""TorchServe's CORS keys and the header each one's value is sent as, on every answer."""
_KNOWN_KEYS = (
    _INT_KEYS
    | _OPTIONAL_INT_KEYS
    | _BOOL_KEYS
    | _ADDRESS_KEYS
    | _FLOAT_KEYS
    | set(CORS_KEYS)
    | {
        "model_store",
        "load_models",
        "models",
        "allowed_urls",
        "certificate_file",
        "private_key_file",
        "service_envelope",
        "metrics_config",
    }
)
# TorchServe 0.12's envelopes (runtime/handlers/envelopes.py)
SERVICE_ENVELOPES = ("body", "json", "kserve", "kservev2")


def parse_properties(text: str) -> dict[str, str]:
    """Parse Java .properties text (comments, `=`/`:`/space separators, `\\` continuations)."""
    result: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.strip() if not logical else raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if _ends_with_continuation(line):
            logical += line[:-1]
            continue
        logical += line
        match = re.match(r"((?:\\.|[^=:\s\\])+)\s*[=:\s]?\s*(.*)", logical)
        if match:
            result[_unescape(match.group(1))] = _unescape(match.group(2))
        logical = ""
    return result


def _ends_with_continuation(line: str) -> bool:
    backslashes = len(line) - len(line.rstrip("\\"))
    return backslashes % 2 == 1


def _unescape(value: str) -> str:
    escapes = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}

    def one(match: re.Match[str]) -> str:
        char = match.group(1)
        if char.startswith("u"):
            return chr(int(char[1:], 16))
        return escapes.get(char, char)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", one, value)


def load_server_config(
    properties: Mapping[str, str],
    env: Mapping[str, str],
    *,
    model_store: str | None = None,
    models: list[str] | None = None,
) -> ServerConfig:
    """Build the server config; command-line values (model_store, models) win over everything."""
    values = dict(properties)
    if _as_bool("enable_envvars_config", values.get("enable_envvars_config", "false")):
        for key in _KNOWN_KEYS:
            env_value = env.get(f"TS_{key.upper()}")
            if env_value is not None:
                values[key] = env_value
    if model_store is not None:
        values["model_store"] = model_store
    if models is not None:
        values["load_models"] = ",".join(models)
    return _build(values)


def _build(values: Mapping[str, str]) -> ServerConfig:
    settings: dict[str, Any] = {}
    ignored = sorted(key for key in values if key not in _KNOWN_KEYS)
    for key, value in values.items():
        if key in _INT_KEYS:
            settings[key] = _as_int(key, value)
        elif key in _OPTIONAL_INT_KEYS:
            settings[key] = _as_int(key, value) if value.strip() else None
        elif key in _BOOL_KEYS:
            settings[key] = _as_bool(key, value)
        elif key in _ADDRESS_KEYS:
            settings[key] = Address.parse(key, value)
        elif key in _FLOAT_KEYS:
            settings[key] = _as_float(key, value)
        elif key in ("model_store", "certificate_file", "private_key_file", "metrics_config"):
            settings[key] = Path(value) if value else None
        elif key == "allowed_urls":
            settings[key] = tuple(part.strip() for part in value.split(",") if part.strip())
        elif key == "service_envelope":
            settings[key] = _as_envelope(value)
        elif key in CORS_KEYS:
            settings[key] = _as_header_value(key, value)
        elif key == "models":
            settings[key] = _parse_models_json(value)
        elif key == "load_models":
            sources, load_all = parse_load_models(value)
            settings["load_models"], settings["load_all_models"] = sources, load_all
    config = replace(ServerConfig(), ignored_keys=tuple(ignored), **settings)
    if config.token_expiration_min < 1:
        raise ConfigError(f"token_expiration_min={config.token_expiration_min}: must be at least 1")
    if config.job_queue_size < 1:
        raise ConfigError(f"job_queue_size={config.job_queue_size}: must be at least 1")
    if config.max_workers_per_model is not None and config.max_workers_per_model < 1:
        raise ConfigError(
            f"max_workers_per_model={config.max_workers_per_model}: must be at least 1 "
            "(leave it out for the default)"
        )
    for key in _POSITIVE_KEYS:
        if getattr(config, key) <= 0:
            raise ConfigError(f"{key}={getattr(config, key)}: must be greater than 0")
    return config


_POSITIVE_KEYS = (
    "max_request_size",
    "max_request_head_size",
    "max_connections",
    "max_buffered_request_size",
    "max_json_depth",
    "max_model_unpacked_size",
    "max_download_size",
    "max_concurrent_downloads",
    "download_timeout_seconds",
    "download_stall_timeout_seconds",
    "request_head_timeout_seconds",
    "request_body_timeout_seconds",
    "keepalive_timeout_seconds",
    "certificate_reload_interval_seconds",
    "grpc_keepalive_seconds",
    "grpc_max_connection_age_seconds",
)


def parse_load_models(value: str) -> tuple[tuple[ModelSource, ...], bool]:
    """`all`, or a comma list of `file.mar`, `name=file.mar` or URLs; returns (sources, all)."""
    sources: list[ModelSource] = []
    load_all = False
    for item in (part.strip() for part in value.split(",")):
        if not item or item == "standalone":
            continue
        if item == "all":
            load_all = True
            continue
        name, sep, url = item.partition("=")
        sources.append(ModelSource(url=url, name=name) if sep else ModelSource(url=item))
    return tuple(sources), load_all


def _parse_models_json(value: str) -> dict[str, dict[str, dict[str, Any]]]:
    try:
        parsed = json.loads(value) if value.strip() else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"models: not valid JSON ({exc}); expected {{name: {{version: {{...}}}}}}"
        ) from None
    if not isinstance(parsed, dict) or not all(
        isinstance(versions, dict) and all(isinstance(v, dict) for v in versions.values())
        for versions in parsed.values()
    ):
        raise ConfigError('models: expected {"name": {"1.0": {"batchSize": 4, ...}}}')
    return parsed


def _as_int(key: str, value: object) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected a whole number") from None


def _as_envelope(value: str) -> str:
    envelope = value.strip()
    if envelope and envelope not in SERVICE_ENVELOPES:
        raise ConfigError(
            f"service_envelope={envelope}: must be one of {', '.join(SERVICE_ENVELOPES)} "
            "(or empty for none)"
        )
    return envelope


def _as_header_value(key: str, value: str) -> str:
    value = value.strip()
    if any(ord(char) < 0x20 or ord(char) > 0xFF or char == "\x7f" for char in value):
        raise ConfigError(
            f"{key}={value!r}: a header value cannot hold control characters or characters "
            "outside Latin-1"
        )
    return value


def _as_float(key: str, value: str) -> float:
    try:
        return float(value.strip())
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected a number") from None


def _as_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ConfigError(f"{key}={value!r}: expected true or false")


@dataclass(frozen=True)
class ModelSettings:
    """What the server does for one model version, after every layer was applied."""

    batch_size: int
    max_batch_delay_ms: int
    min_workers: int
    max_workers: int
    response_timeout_s: int
    startup_timeout_s: int
    job_queue_size: int
    device_type: str  # "gpu", "cpu", or "" for "GPU when there is one"
    device_ids: tuple[int, ...] | None


# model-config.yaml / `models` JSON key -> ModelSettings field
_MODEL_KEYS = {
    "batchSize": "batch_size",
    "maxBatchDelay": "max_batch_delay_ms",
    "minWorkers": "min_workers",
    "maxWorkers": "max_workers",
    "responseTimeout": "response_timeout_s",
    "startupTimeout": "startup_timeout_s",
    "jobQueueSize": "job_queue_size",
}
# registration API parameter -> model-config key
_API_KEYS = {
    "batch_size": "batchSize",
    "max_batch_delay": "maxBatchDelay",
    "response_timeout": "responseTimeout",
    "startup_timeout": "startupTimeout",
}


def resolve_model_settings(
    server: ServerConfig,
    *,
    default_workers: int,
    properties_model: Mapping[str, Any],
    model_yaml: Mapping[str, Any],
    api: Mapping[str, str],
) -> ModelSettings:
    """Apply defaults < config.properties < model-config.yaml < API parameters."""
    base = ModelSettings(
        batch_size=server.batch_size,
        max_batch_delay_ms=server.max_batch_delay,
        min_workers=default_workers,
        max_workers=default_workers,
        response_timeout_s=server.default_response_timeout,
        startup_timeout_s=DEFAULT_STARTUP_TIMEOUT_S,
        job_queue_size=server.job_queue_size,
        device_type="",
        device_ids=None,
    )
    api_layer: dict[str, Any] = {_API_KEYS[k]: v for k, v in api.items() if k in _API_KEYS}
    if "initial_workers" in api:
        api_layer["minWorkers"] = api_layer["maxWorkers"] = api["initial_workers"]
    settings = base
    for source, layer in (
        ("config.properties models", properties_model),
        ("model-config.yaml", model_yaml),
        ("API", api_layer),
    ):
        settings = _apply_layer(settings, layer, source)
    if settings.max_workers < settings.min_workers:
        settings = replace(settings, max_workers=settings.min_workers)
    _check_model_settings(settings)
    return settings


def _apply_layer(settings: ModelSettings, layer: Mapping[str, Any], source: str) -> ModelSettings:
    changes: dict[str, Any] = {}
    for key, field_name in _MODEL_KEYS.items():
        if key in layer and layer[key] is not None:
            changes[field_name] = _as_int(f"{source} {key}", layer[key])
    device_type = layer.get("deviceType")
    if device_type is not None:
        if str(device_type).lower() not in ("cpu", "gpu"):
            raise ConfigError(f"{source} deviceType={device_type!r}: expected cpu or gpu")
        changes["device_type"] = str(device_type).lower()
    device_ids = layer.get("deviceIds")
    if device_ids is not None:
        if not isinstance(device_ids, list):
            raise ConfigError(f"{source} deviceIds={device_ids!r}: expected a list like [0, 1]")
        changes["device_ids"] = tuple(_as_int(f"{source} deviceIds", i) for i in device_ids)
    return replace(settings, **changes)


def _check_model_settings(settings: ModelSettings) -> None:
    minimums = {
        "batchSize": (settings.batch_size, 1),
        "maxBatchDelay": (settings.max_batch_delay_ms, 0),
        "minWorkers": (settings.min_workers, 0),
        "responseTimeout": (settings.response_timeout_s, 1),
        "startupTimeout": (settings.startup_timeout_s, 1),
        "jobQueueSize": (settings.job_queue_size, 1),
    }
    for key, (value, minimum) in minimums.items():
        if value < minimum:
            raise ConfigError(f"{key}={value}: must be at least {minimum}")
