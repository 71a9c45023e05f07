"""TLS with TorchServe's keys: a self-signed certificate made here (openssl), `https://`
addresses for the inference and management ports, `enable_grpc_ssl=true` for both gRPC ports,
and real clients (httpx, grpcio) that trust only that certificate. A plain-HTTP client on the TLS
port is refused at the handshake, and the server goes on serving."""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import empty_pb2
from marfleet.runtime.server.protos import inference_pb2 as ts_pb2
from marfleet.runtime.server.protos import management_pb2

from e2e.bench.router_procs import router
from e2e.support import free_port, wait_for
from tests.certificates import self_signed
from tests.integration.server_archives import HANDLERS
from tests.serving import Server, archive, serve

PING = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping"
PREDICT = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions"
MANAGEMENT = "/org.pytorch.serve.grpc.management.ManagementAPIsService"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("server-tls")
    cert, key = root / "cert.pem", root / "key.pem"
    self_signed(cert, key)
    store = root / "store"
    store.mkdir()
    archive(store, "echo", HANDLERS / "behaviour.py")
    properties = {"certificate_reload_interval_seconds": "0.5"}
    with serve(
        store, root / "run", models=["echo.mar"], properties=properties, tls=(cert, key)
    ) as srv:
        yield srv


def test_https_serves_the_inference_and_management_apis(server: Server) -> None:
    ping = httpx.get(f"{server.inference}/ping", verify=server.verify)
    assert ping.status_code == 200 and ping.json() == {"status": "Healthy"}
    answer = httpx.post(f"{server.inference}/predictions/echo", json={"x": 1}, verify=server.verify)
    assert answer.status_code == 200 and answer.json()["echo"] == {"x": 1}
    models = httpx.get(
        f"{server.management}/models",
        headers=server.auth,
        verify=server.verify,
    )
    assert models.status_code == 200 and models.json()["models"][0]["modelName"] == "echo"


def test_plain_http_on_a_tls_port_is_refused_and_serving_goes_on(
    server: Server,
) -> None:
    plain = server.inference.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/ping", timeout=10)
    assert httpx.get(f"{server.inference}/ping", verify=server.verify).status_code == 200


def _predict_echo(channel: grpc.Channel) -> Any:
    request = ts_pb2.PredictionsRequest(model_name="echo", input={"body": b"{}"})
    answer = channel.unary_unary(
        PREDICT,
        request_serializer=ts_pb2.PredictionsRequest.SerializeToString,
        response_deserializer=ts_pb2.PredictionResponse.FromString,
    )(request, timeout=30)
    return json.loads(answer.prediction)


def test_grpc_over_tls(server: Server) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(str(server.certificate)).read_bytes()
    )
    with grpc.secure_channel(server.grpc, credentials) as channel:
        ping = channel.unary_unary(
            PING,
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=ts_pb2.TorchServeHealthResponse.FromString,
        )(empty_pb2.Empty(), timeout=30)
        assert json.loads(ping.health) == {"status": "Healthy"}
        assert _predict_echo(channel)["batch"] == 1
    with grpc.insecure_channel(server.grpc) as plain:
        with pytest.raises(grpc.RpcError) as error:
            plain.unary_unary(
                PING,
                request_serializer=empty_pb2.Empty.SerializeToString,
                response_deserializer=ts_pb2.TorchServeHealthResponse.FromString,
            )(empty_pb2.Empty(), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_management_over_tls_with_the_management_key(server: Server) -> None:
    """The gRPC management port shares the certificate; the model API is off here (the
    default), which TorchServe 0.12's gRPC service answers PERMISSION_DENIED "Model API
    disabled" (seen on TorchServe itself), where HTTP answers 405."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(str(server.certificate)).read_bytes()
    )
    with grpc.secure_channel(server.grpc_management, credentials) as channel:

        def call(method: str, request: Any, metadata: list[tuple[str, str]]) -> Any:
            return channel.unary_unary(
                f"{MANAGEMENT}/{method}",
                request_serializer=type(request).SerializeToString,
                response_deserializer=management_pb2.ManagementResponse.FromString,
            )(request, metadata=metadata, timeout=30)

        auth = [("authorization", server.auth["Authorization"])]
        listed = call("ListModels", management_pb2.ListModelsRequest(limit=10), auth)
        assert [m["modelName"] for m in json.loads(listed.msg)["models"]] == ["echo"]
        with pytest.raises(grpc.RpcError) as error:
            call("RegisterModel", management_pb2.RegisterModelRequest(url="echo.mar"), auth)
        assert (error.value.code(), error.value.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "Model API disabled",
        )
        inference_key = [("authorization", server.bearer("inference")["Authorization"])]
        with pytest.raises(grpc.RpcError) as error:
            call("ListModels", management_pb2.ListModelsRequest(limit=10), inference_key)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_router_talks_tls_to_its_upstream_over_http_and_grpc(server: Server) -> None:
    """A router before the TLS server (an https:// backend), trusting the test's certificate
    with --upstream-ca: HTTP and gRPC reach the model; without that CA the upstream's
    certificate is not trusted, and the router answers 502 saying so."""
    grpc_port = free_port()
    args = ["--weights", "stable=100", "--upstream-ca", str(server.certificate)]
    args += ["--grpc-port", str(grpc_port), f"--grpc-backend=stable={server.grpc}"]
    with router({"stable": server.inference}, *args) as proc:
        answer = httpx.post(f"{proc.url}/predictions/echo", json={"x": 1}, timeout=30)
        assert answer.status_code == 200 and answer.json()["echo"] == {"x": 1}
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            assert _predict_echo(channel)["batch"] == 1
    with router({"stable": server.inference}, "--weights", "stable=100") as proc:
        refused = httpx.post(f"{proc.url}/predictions/echo", json={"x": 1}, timeout=30)
    assert refused.status_code == 502, refused.text
    assert "CERTIFICATE_VERIFY_FAILED" in refused.json()["message"], refused.text


def test_the_router_serves_its_clients_over_tls_with_the_servers_certificate(
    server: Server,
) -> None:
    """With --certificate-file and --private-key-file (what the operator renders for an
    InferenceService with spec.tls), the router's front speaks HTTPS and gRPC TLS, as the
    variants' pods do, so a client of the stable Service keeps its scheme when a second
    variant puts the router before the pods. A plain client is refused at the handshake; the
    metrics port stays plain for the scrapers."""
    grpc_port = free_port()
    certificate = Path(str(server.certificate))
    args = ["--weights", "stable=100", "--upstream-ca", str(certificate)]
    args += ["--certificate-file", str(certificate)]
    args += ["--private-key-file", str(certificate.with_name("key.pem"))]
    args += ["--grpc-port", str(grpc_port), f"--grpc-backend=stable={server.grpc}"]
    with router({"stable": server.inference}, *args) as proc:
        front = proc.url.replace("http://", "https://")
        answer = httpx.post(
            f"{front}/predictions/echo", json={"x": 1}, verify=server.verify, timeout=30
        )
        assert answer.status_code == 200 and answer.json()["echo"] == {"x": 1}
        credentials = grpc.ssl_channel_credentials(root_certificates=certificate.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{grpc_port}", credentials) as channel:
            assert _predict_echo(channel)["batch"] == 1
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"{proc.url}/predictions/echo", json={"x": 1}, timeout=10)
        with (
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
            pytest.raises(grpc.RpcError) as plain,
        ):
            _predict_echo(channel)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
        assert httpx.get(proc.metrics_url, timeout=10).status_code == 200


def test_the_router_refuses_half_a_certificate_pair(server: Server) -> None:
    with (
        pytest.raises(RuntimeError, match="go together"),
        router(
            {"stable": server.inference},
            *("--weights", "stable=100", "--certificate-file", str(server.certificate)),
        ),
    ):
        pass


def test_a_renewed_certificate_is_served_and_trusted_without_a_restart(
    server: Server, tmp_path: Path
) -> None:
    """A renewed self-signed certificate (the router's CA is the certificate itself, as with
    `caKey: tls.crt`): both files are replaced the way the kubelet updates a Secret volume.
    The server serves the new pair on HTTPS and gRPC within its reload interval, and a router
    started before the renewal trusts it over HTTP and gRPC, all without a restart; once the
    replaced CA's grace period is over, the router drops it and still routes to the server.
    A router serving its own clients with the pair (--certificate-file) serves the renewed
    one too. (This test renews the module's certificate: it comes last.)"""
    grpc_port = free_port()
    args = ["--weights", "stable=100", "--upstream-ca", str(server.certificate)]
    args += ["--upstream-ca-reload-seconds", "0.5", "--upstream-ca-grace-seconds", "2"]
    args += ["--grpc-port", str(grpc_port), f"--grpc-backend=stable={server.grpc}"]
    old = tmp_path / "old.pem"
    old.write_bytes(Path(str(server.certificate)).read_bytes())
    front_grpc = free_port()
    front_args = ["--weights", "stable=100", "--upstream-ca", str(server.certificate)]
    front_args += ["--certificate-file", str(server.certificate)]
    front_args += ["--private-key-file", str(Path(str(server.certificate)).with_name("key.pem"))]
    front_args += ["--certificate-reload-seconds", "0.5", "--upstream-ca-reload-seconds", "0.5"]
    front_args += ["--grpc-port", str(front_grpc), f"--grpc-backend=stable={server.grpc}"]
    with (
        router({"stable": server.inference}, *args) as proc,
        router({"stable": server.inference}, *front_args) as front,
    ):
        renewed_key, renewed_cert = tmp_path / "key.pem", tmp_path / "cert.pem"
        self_signed(renewed_cert, renewed_key)
        key_file = Path(str(server.certificate)).with_name("key.pem")
        os.replace(renewed_key, key_file)
        os.replace(renewed_cert, Path(str(server.certificate)))
        new = Path(str(server.certificate))

        def serves(trusted: Path, base: str = server.inference) -> bool:
            try:
                trust = ssl.create_default_context(cafile=str(trusted))
                httpx.get(f"{base}/ping", verify=trust, timeout=5)
            except httpx.ConnectError:
                return False
            return True

        wait_for(lambda: serves(new), 15, "the server to serve the renewed certificate")
        assert not serves(old)
        credentials = grpc.ssl_channel_credentials(root_certificates=new.read_bytes())
        with grpc.secure_channel(server.grpc, credentials) as channel:
            assert _predict_echo(channel)["batch"] == 1
        https_front = front.url.replace("http://", "https://")
        wait_for(lambda: serves(new, https_front), 15, "the router to serve the renewed pair")
        assert not serves(old, https_front)
        with grpc.secure_channel(f"127.0.0.1:{front_grpc}", credentials) as channel:
            assert _predict_echo(channel)["batch"] == 1

        def routed() -> bool:
            answer = httpx.post(f"{proc.url}/predictions/echo", json={"x": 1}, timeout=30)
            return answer.status_code == 200

        wait_for(routed, 15, "the router to trust the renewed certificate")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            assert _predict_echo(channel)["batch"] == 1
        # the replaced CA's grace period over, the router verifies with the renewed one only
        wait_for(
            lambda: "upstream CA no longer trusted" in proc.log.read_text(),
            15,
            "the router to drop the replaced CA",
        )
        assert routed()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            assert _predict_echo(channel)["batch"] == 1
    assert "serving certificate reloaded" in server.log()
