"""docs/runtime-api.md, written from the OpenAPI descriptions a running `marfleet serve` returns.

The server builds its descriptions from its own route tables (`GET /api-description` and
`OPTIONS /` on the inference and management ports), so asking a real server, rather than reading
source, documents exactly the routes that answer. The server is started with an empty model
store on free loopback ports and stopped again; rendering is pure and kept apart from that.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from marfleet.runtime.server.http import MODEL_VERSION_HEADER

from e2e.support import free_port

REPO = Path(__file__).resolve().parents[2]
PAGE_PATH = REPO / "docs" / "runtime-api.md"
APIS = ("inference", "management")
PORTS = {"inference": 8080, "management": 8081, "metrics": 8082}
ALL_METHODS = frozenset({"delete", "get", "head", "post", "put"})


@contextmanager
def _server(workdir: Path) -> Iterator[dict[str, str]]:
    """A `marfleet serve` with no models; yields each API's base URL."""
    urls = {name: f"http://127.0.0.1:{free_port()}" for name in PORTS}
    config = workdir / "config.properties"
    config.write_text("".join(f"{name}_address={url}\n" for name, url in urls.items()))
    store = workdir / "store"
    store.mkdir()
    command = [sys.executable, "-m", "marfleet.runtime.cli", "serve", "--foreground"]
    command += ["--model-store", str(store), "--ts-config", str(config)]
    with (workdir / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"marfleet serve exited: {(workdir / 'serve.log').read_text()}")
            try:
                httpx.get(f"{urls['inference']}/ping", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield urls
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def fetch_descriptions() -> dict[str, dict[str, Any]]:
    """The OpenAPI description of each API, as a fresh `marfleet serve` answers it."""
    with (
        tempfile.TemporaryDirectory(prefix="marfleet-docs-") as scratch,
        _server(Path(scratch)) as urls,
    ):
        keys = json.loads((Path(scratch) / "key_file.json").read_text())
        headers = {"Authorization": f"Bearer {keys['management']['key']}"}
        found = {}
        for api in APIS:
            reply = httpx.get(f"{urls[api]}/api-description", headers=headers, timeout=10)
            reply.raise_for_status()
            found[api] = reply.json()
        return found


def _rows(description: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(methods, path, summary), one row per path and summary, in the server's route order."""
    rows = []
    for path, operations in description["paths"].items():
        by_summary: dict[str, list[str]] = {}
        for method, operation in operations.items():
            by_summary.setdefault(operation["description"], []).append(method)
        for summary, methods in by_summary.items():
            shown = "any" if set(methods) >= ALL_METHODS else ", ".join(m.upper() for m in methods)
            rows.append((shown, path, summary))
    return rows


def _table(description: Mapping[str, Any]) -> list[str]:
    lines = ["| method | path | what it does |", "|---|---|---|"]
    lines += [f"| {m} | `{p}` | {s} |" for m, p, s in _rows(description)]
    return lines


def _grpc_section() -> list[str]:
    """The gRPC services `grpc_api` and `grpc_management` serve, read from the descriptors they
    serve them with."""
    from marfleet.runtime.server import grpc_api, grpc_management
    from marfleet.runtime.server.protos import (
        inference_pb2,
        management_pb2,
        open_inference_grpc_pb2,
    )

    def rows(services: Any) -> list[str]:
        lines = []
        for name, service in services:
            for method in service.methods:
                kind = {
                    (False, False): "unary",
                    (False, True): "server stream",
                    (True, True): "bidirectional stream",
                }[(method.client_streaming, method.server_streaming)]
                lines.append(f"| `{name}` | `{method.name}` | {kind} |")
        return lines

    inference = (
        (grpc_api.TS_INFERENCE, inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"]),
        *(
            (name, open_inference_grpc_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"])
            for name in grpc_api.OIP_SERVICES
        ),
    )
    management = (
        (
            grpc_management.SERVICE,
            management_pb2.DESCRIPTOR.services_by_name["ManagementAPIsService"],
        ),
    )
    return [
        "## gRPC",
        "",
        "Two more ports, off unless set: `grpc_inference_port` and `grpc_management_port`",
        "(TorchServe's 7070 and 7071). With `grpc_inference_port` set (the operator sets 7070),",
        "the inference services answer over gRPC as well, with the same models, tokens",
        "(metadata `authorization: Bearer <key>`), limits and metrics as HTTP. Messages and",
        "field numbers are TorchServe 0.12's (`inference.proto`, `management.proto`,",
        "`open_inference_grpc.proto`); the Open Inference Protocol is served under TorchServe's",
        "package and KServe's `inference` package, so tritonclient and KServe clients work",
        "unchanged. A `PredictionsRequest`'s `input` map gives the handler one input per entry,",
        "as bytes. Errors map HTTP statuses to gRPC codes:",
        "400 INVALID_ARGUMENT, 404 NOT_FOUND, 409 ALREADY_EXISTS, 413 and 507",
        "RESOURCE_EXHAUSTED, 500 INTERNAL, 503 UNAVAILABLE; a missing or wrong key is",
        "PERMISSION_DENIED. StreamPredictions sends one message per intermediate response.",
        "Each gRPC port has the HTTP listeners' limits: `max_connections` connections and as",
        "many calls in flight (RESOURCE_EXHAUSTED beyond), handshake and idle timeouts, and",
        "keepalive pings that close a vanished client's connection",
        "([operations.md](operations.md#limits)).",
        "",
        "| service | method | kind |",
        "|---|---|---|",
        *rows(inference),
        "",
        "With `grpc_management_port` set, TorchServe's management service answers there (the",
        "operator sets 7071 and, like the HTTP management port, exposes it on the pods and the",
        "variant Services only). Each method runs the HTTP management call of the same name",
        "with the same rules, and wants the `management` key.",
        "`msg` carries TorchServe's status text or the JSON document the HTTP call answers. As",
        "in TorchServe's gRPC service, a number left at 0 counts as not given (`min_worker`",
        "then means 1), RegisterModel is asynchronous unless `synchronous` is set, ListModels",
        "lists nothing without a `limit`, and RegisterModel or UnregisterModel with the model",
        "API off (`enable_model_api=false`, the default) is PERMISSION_DENIED",
        '"Model API disabled". `DescribeModel` with `customized` adds `customizedMetadata`.',
        "",
        "| service | method | kind |",
        "|---|---|---|",
        *rows(management),
    ]


def render(descriptions: Mapping[str, Mapping[str, Any]]) -> str:
    inference, management = descriptions["inference"], descriptions["management"]
    error_schema = next(
        op["responses"]["default"]["content"]["application/json"]["schema"]
        for operations in inference["paths"].values()
        for op in operations.values()
    )
    fields = ", ".join(
        f"{name}: {schema['type']}" for name, schema in error_schema["properties"].items()
    )
    lines = [
        "# Runtime API reference",
        "",
        "<!-- Generated by `python -m e2e.docs write` from the OpenAPI descriptions a running",
        "     `marfleet serve` returns; a test keeps this page in step with the server. -->",
        "",
        "`marfleet serve` listens on three ports, TorchServe's defaults: "
        + ", ".join(f"{name} {port}" for name, port in PORTS.items())
        + ". Set them with `inference_address`, `management_address` and `metrics_address` in",
        "config.properties (or `TS_INFERENCE_ADDRESS` and the like, with",
        "`enable_envvars_config=true`). The inference and management APIs describe themselves",
        "in OpenAPI 3 at `GET /api-description` and `OPTIONS /`; this page is those",
        "descriptions laid out as tables. `OPTIONS` on any path of a model",
        "(`/predictions/m`, `/models/m/1.0`, ...) answers with that model's part of the",
        "description, as TorchServe does (404 for a model or version that is not registered).",
        "",
        f"Every error answer has TorchServe's JSON body, `{{{fields}}}`, for example",
        '`{"code": 404, "type": "ModelNotFoundException", "message": "Model not found: x"}`.',
        "On KServe's paths (`/v1/...`, `/v2` and `/v2/...`) it also carries `error`, the same",
        "text as `message`: the KServe protocols' error body, whose clients (tritonclient,",
        "KServe's SDK) read the reason there.",
        "",
        "Every answer of the three ports carries, as TorchServe's do, `x-request-id` (the",
        "client's, when it is a plain token of at most 128 characters, else a fresh UUID; the",
        "handler's `context` gets the same id), `Cache-Control: no-cache, no-store,",
        "must-revalidate, private`, `Pragma: no-cache` and `Expires: Thu, 01 Jan 1970 00:00:00",
        "UTC`, and the CORS headers config.properties sets: `cors_allowed_origin`,",
        "`cors_allowed_methods` and `cors_allowed_headers` as `Access-Control-Allow-Origin`,",
        "`-Methods` and `-Headers` (a header a handler sets itself is kept).",
        "",
        f"## Inference API (port {PORTS['inference']}): {inference['info']['title']}",
        "",
        "With token authorization on (the default, as in TorchServe 0.12) every route but",
        "`GET /api-description` and `OPTIONS /` needs `Authorization: Bearer <key>` with the",
        "`inference` key of `key_file.json`; marfleet's",
        "`disable_inference_token_authorization=true` (what the operator renders for pods)",
        "opens this port and keeps the management key.",
        "",
        "Predictions take the request body as the handler's input (JSON, text or bytes, by",
        "`Content-Type`; multipart forms give one input per field). `{model_version}` is",
        "optional wherever a route exists without it: the default version answers.",
        "Every inference answer (predictions, explanations, KServe v1 and v2 inference, errors",
        "included once a model was found) names the model version that answered in",
        f"`{MODEL_VERSION_HEADER}`, a header TorchServe does not send: the router labels its",
        "series with it, so a canary is judged on its own version's answers (canary.md).",
        "",
        "KServe v2 requests are checked first (a malformed one is a 400 naming the input at",
        "fault; binary tensors become JSON `data`). Without a `service_envelope` the handler",
        "gets the request document as its row and marfleet turns the answer into a v2",
        "response. With `service_envelope=kservev2` in config.properties (TorchServe's key, for",
        "every model and every inference API, as there) the workers unwrap each input into a",
        "row for stock handlers and wrap the results into TorchServe's v2 response, byte for",
        "byte; `kserve`, `json` and `body` are TorchServe's other envelopes. As in TorchServe,",
        "`kservev2` and `kserve` read only the first request of a batch (the others fail with",
        "503 `number of batch response mismatched`): keep `batchSize` 1 for such models.",
        "`/v2/models/{model_name}/explain` runs the handler's explanation (TorchServe's",
        "extension of the protocol) and answers what the handler answers.",
        "",
        "v2 model metadata (`GET /v2/models/{model_name}`, gRPC `ModelMetadata`) lists the",
        "tensors the archive's model-config.yaml declares under `inputs` and `outputs`, each",
        "`{name, datatype, shape}` with `-1` for a dimension of any size (TorchServe ignores",
        "these keys, so the archive still loads there); a wrong entry fails the registration",
        "with a 400 naming it. Without them both lists are empty.",
        "",
        "```yaml",
        "# model-config.yaml (torch-model-archiver --config-file model-config.yaml)",
        "batchSize: 8",
        "inputs:",
        "  - {name: input-0, datatype: BYTES, shape: [-1]}",
        "outputs:",
        "  - {name: scores, datatype: FP32, shape: [-1, 10]}",
        "```",
        "",
        *_table(inference),
        "",
        f"## Management API (port {PORTS['management']}): {management['info']['title']}",
        "",
        "Every call needs `Authorization: Bearer <key>`, the `management` key the server writes",
        "to `key_file.json` in its working directory at start (with each key's `expiration time`,",
        "`token_expiration_min` minutes ahead), unless token authorization is disabled",
        "(`--disable-token-auth`, `disable_token_authorization=true`). `GET /token?type=`",
        "`management` or `inference` takes the `API` key instead and replaces that key (the old",
        "one stops working; the file is rewritten). Registering and",
        "unregistering models also needs `--enable-model-api` (`enable_model_api=true`).",
        "Query parameters, status codes and bodies are TorchServe's:",
        "",
        "- register: `POST /models?url=<archive or URL>` with `model_name`, `batch_size`,",
        "  `max_batch_delay`, `initial_workers` (default `default_workers_per_model`, else 0),",
        "  `response_timeout`, `startup_timeout`, `handler`, `runtime` (`python`) and",
        "  `synchronous` (`false`: 202 `Processing worker updates...`);",
        "- scale: `PUT /models/{model_name}?min_worker=&max_worker=&synchronous=` (`max_worker`",
        "  defaults to the new `min_worker`);",
        "- describe: `GET /models/{model_name}[/{model_version}]?customized=true` adds",
        "  `customizedMetadata`, what the handler's `describe_handle()` answers (asked of one",
        "  of the version's workers, as TorchServe does; `{}` unless it is a JSON object; not",
        "  for `/all`);",
        "- list: `GET /models?limit=&next_page_token=` (paginated).",
        "",
        *_table(management),
        "",
        *_grpc_section(),
        "",
        f"## Metrics (port {PORTS['metrics']})",
        "",
        "| method | path | what it does |",
        "|---|---|---|",
        "| GET | `/metrics` | Prometheus text: TorchServe's metric names and marfleet's "
        "(see [metrics.md](metrics.md)). |",
    ]
    return "\n".join(lines) + "\n"
