"""config.properties, TS_* variables and model-config.yaml: parsing and precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
from marfleet.runtime.config import (
    Address,
    ConfigError,
    ModelSource,
    ServerConfig,
    load_server_config,
    parse_properties,
    resolve_model_settings,
)
from marfleet.runtime.server.app import response_headers, serving_certificate


def test_properties_syntax() -> None:
    text = "\n".join(
        [
            "# comment",
            "! also a comment",
            "inference_address=http://0.0.0.0:8080",
            "management_address : http://0.0.0.0:8081",
            "model_store /models",
            "models={\\",
            '  "a": {"1.0": {"batchSize": 2}}}',
            "path=C\\:\\\\dir\\tx",
            "unicode=\\u00e9",
        ]
    )
    assert parse_properties(text) == {
        "inference_address": "http://0.0.0.0:8080",
        "management_address": "http://0.0.0.0:8081",
        "model_store": "/models",
        "models": '{"a": {"1.0": {"batchSize": 2}}}',
        "path": "C:\\dir\tx",
        "unicode": "é",
    }


def test_defaults_are_torchserves() -> None:
    config = load_server_config({}, {})
    assert config.inference_address == Address("127.0.0.1", 8080)
    assert config.management_address == Address("127.0.0.1", 8081)
    assert config.metrics_address == Address("127.0.0.1", 8082)
    assert (config.job_queue_size, config.max_request_size) == (100, 6553500)
    assert config.disable_token_authorization is False
    assert config.enable_model_api is False


def test_known_keys_are_typed_and_unknown_ones_reported() -> None:
    config = load_server_config(
        {
            "inference_address": "http://0.0.0.0:9080",
            "job_queue_size": "7",
            "number_of_gpu": "2",
            "disable_token_authorization": "TRUE",
            "allowed_urls": "https://models\\.example/.*, file://.*",
            "vmargs": "-Xmx4g",
            "number_of_netty_threads": "4",
        },
        {},
    )
    assert config.inference_address == Address("0.0.0.0", 9080)
    assert config.job_queue_size == 7 and config.number_of_gpu == 2
    assert config.disable_token_authorization is True
    assert config.allowed_urls == ("https://models\\.example/.*", "file://.*")
    assert config.ignored_keys == ("number_of_netty_threads", "vmargs")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("job_queue_size", "many", "whole number"),
        ("job_queue_size", "0", "at least 1"),
        ("enable_model_api", "yes", "true or false"),
        ("inference_address", "8080", "http://HOST:PORT"),
        ("models", "{not json", "not valid JSON"),
        ("cors_allowed_origin", "https://a.example\r\nSet-Cookie: x=1", "control characters"),
        ("cors_allowed_headers", "X-\u2603", "outside Latin-1"),
    ],
)
def test_bad_values_name_the_key(key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=key) as raised:
        load_server_config({key: value}, {})
    assert fragment in str(raised.value)


def test_ts_variables_apply_only_when_enabled() -> None:
    env = {"TS_JOB_QUEUE_SIZE": "9", "TS_MODEL_STORE": "/from/env"}
    assert load_server_config({"job_queue_size": "3"}, env).job_queue_size == 3
    config = load_server_config({"job_queue_size": "3", "enable_envvars_config": "true"}, env)
    assert config.job_queue_size == 9
    assert config.model_store == Path("/from/env")


def test_command_line_wins_over_file() -> None:
    config = load_server_config(
        {"model_store": "/file", "load_models": "x.mar"},
        {},
        model_store="/cli",
        models=["a=a.mar", "https://models.example/b.mar"],
    )
    assert config.model_store == Path("/cli")
    assert config.load_models == (
        ModelSource(url="a.mar", name="a"),
        ModelSource(url="https://models.example/b.mar"),
    )


def test_load_models_all() -> None:
    config = load_server_config({"load_models": "all"}, {})
    assert config.load_all_models and config.load_models == ()


def settings(
    server: ServerConfig | None = None,
    properties_model: dict[str, object] | None = None,
    model_yaml: dict[str, object] | None = None,
    api: dict[str, str] | None = None,
) -> object:
    return resolve_model_settings(
        server or ServerConfig(),
        default_workers=1,
        properties_model=properties_model or {},
        model_yaml=model_yaml or {},
        api=api or {},
    )


def test_precedence_api_over_yaml_over_properties_over_defaults() -> None:
    server = load_server_config({"batch_size": "2", "max_batch_delay": "50"}, {})
    resolved = resolve_model_settings(
        server,
        default_workers=1,
        properties_model={"batchSize": 3, "maxBatchDelay": 60, "responseTimeout": 30},
        model_yaml={"batchSize": 4, "maxBatchDelay": 70},
        api={"batch_size": "5"},
    )
    assert resolved.batch_size == 5  # API
    assert resolved.max_batch_delay_ms == 70  # model-config.yaml
    assert resolved.response_timeout_s == 30  # config.properties models
    assert resolved.job_queue_size == 100  # default
    assert resolved.startup_timeout_s == 120


def test_initial_workers_sets_min_and_max() -> None:
    resolved = resolve_model_settings(
        ServerConfig(),
        default_workers=1,
        properties_model={},
        model_yaml={"minWorkers": 1, "maxWorkers": 4},
        api={"initial_workers": "3"},
    )
    assert (resolved.min_workers, resolved.max_workers) == (3, 3)


def test_max_workers_never_below_min() -> None:
    resolved = resolve_model_settings(
        ServerConfig(), default_workers=1, properties_model={}, model_yaml={"minWorkers": 3}, api={}
    )
    assert (resolved.min_workers, resolved.max_workers) == (3, 3)


def test_device_settings_from_yaml() -> None:
    resolved = resolve_model_settings(
        ServerConfig(),
        default_workers=1,
        properties_model={},
        model_yaml={"deviceType": "GPU", "deviceIds": [1, 0], "jobQueueSize": 5},
        api={},
    )
    assert resolved.device_type == "gpu" and resolved.device_ids == (1, 0)
    assert resolved.job_queue_size == 5


@pytest.mark.parametrize(
    ("model_yaml", "fragment"),
    [
        ({"batchSize": 0}, "batchSize=0: must be at least 1"),
        ({"batchSize": "four"}, "model-config.yaml batchSize"),
        ({"deviceType": "tpu"}, "expected cpu or gpu"),
        ({"deviceIds": 0}, "expected a list"),
    ],
)
def test_bad_model_settings_are_refused(model_yaml: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        resolve_model_settings(
            ServerConfig(), default_workers=1, properties_model={}, model_yaml=model_yaml, api={}
        )
    assert fragment in str(raised.value)


def test_https_addresses_and_grpc_ssl_need_the_certificate_and_key(tmp_path: Path) -> None:
    config = load_server_config({"inference_address": "https://0.0.0.0:8443"}, {})
    assert config.inference_address == Address("0.0.0.0", 8443, tls=True)
    for properties in ({"inference_address": "https://0.0.0.0:8443"}, {"enable_grpc_ssl": "true"}):
        with pytest.raises(ConfigError, match="certificate_file and private_key_file"):
            serving_certificate(load_server_config(properties, {}))
    missing = {"enable_grpc_ssl": "true", "certificate_file": str(tmp_path / "no.pem")}
    missing["private_key_file"] = missing["certificate_file"]
    with pytest.raises(ConfigError, match="cannot be read"):
        serving_certificate(load_server_config(missing, {}))
    assert serving_certificate(load_server_config({}, {})) is None


def test_cors_keys_come_from_ts_variables_too() -> None:
    env = {"TS_CORS_ALLOWED_ORIGIN": "https://app.example"}
    config = load_server_config({"enable_envvars_config": "true"}, env)
    assert config.cors_allowed_origin == "https://app.example"


def test_cors_keys_become_headers_on_every_answer_beside_torchserves_no_cache() -> None:
    config = load_server_config(
        {"cors_allowed_origin": " * ", "cors_allowed_methods": "GET, POST"}, {}
    )
    assert response_headers(config) == {
        "Pragma": "no-cache",
        "Cache-Control": "no-cache, no-store, must-revalidate, private",
        "Expires": "Thu, 01 Jan 1970 00:00:00 UTC",
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "GET, POST",
    }
