"""`require_startup_models=true` (what the operator renders): a pod exists for its model, so a
real `marfleet serve` is unhealthy until the model serves, loads it again with backoff while its
workers fail, heals once the cause is gone, and stays unhealthy for an archive that can never
load. Without the key the failing model is skipped and the server is healthy (TorchServe's way).

The cause is real: the handler's `initialize` raises until a file it names exists.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.handler_sources import write_handler
from tests.serving import Server, archive, serve

pytestmark = pytest.mark.slow

REQUIRED = {"require_startup_models": "true", "disable_token_authorization": "true"}

HANDLER = """
import os
from typing import Any


class NeedsFile:
    def initialize(self, context: Any) -> None:
        if not os.path.exists({marker!r}):
            raise RuntimeError("the weights are not there yet")

    def handle(self, data: Any, context: Any) -> Any:
        return [{{"served": True}} for _ in data]
"""


def _store(root: Path, marker: Path) -> Path:
    store = root / "store"
    store.mkdir()
    handler = write_handler(root, "needs_file", HANDLER.format(marker=str(marker)))
    archive(store, "needsfile", handler)
    (store / "broken.mar").write_bytes(b"this is not a model archive" * 10)
    return store


def _ping(server: Server) -> tuple[int, str, str]:
    """HTTP /ping's status and verdict, and gRPC Ping's verdict (its status is always OK)."""
    http = httpx.get(f"{server.inference}/ping", timeout=10)
    return http.status_code, http.json()["status"], server.grpc_health()["status"]


def _load_failures(server: Server) -> float:
    page = httpx.get(f"{server.metrics}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("marfleet_model_load_failures_total{")
    )


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_required_model_keeps_the_server_unready_until_a_retry_loads_it(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "weights-arrived"
    store = _store(tmp_path, marker)
    with serve(
        store, tmp_path / "run", models=["needsfile.mar"], properties=REQUIRED, healthy=False
    ) as server:
        _wait(lambda: "trying again" in server.log(), 60, "the failed load was not retried")
        assert _ping(server) == (500, "Unhealthy", "Unhealthy")
        assert httpx.get(f"{server.inference}/v2/health/ready").json() == {"ready": False}
        failures = _load_failures(server)
        assert failures >= 2, "each try's failure is counted for the alert"
        assert '"url": "needsfile.mar"' in server.log()
        marker.touch()  # the cause goes away: the next try (at most 60 s later) loads it
        _wait(lambda: _ping(server)[0] == 200, 90, "the model did not load once it could")
        assert _ping(server) == (200, "Healthy", "Healthy")
        answer = httpx.post(f"{server.inference}/predictions/needsfile", json={"x": 1})
        assert answer.status_code == 200 and answer.json() == {"served": True}
        tries = server.log().count("required startup model failed to load")
        time.sleep(3)
        assert server.log().count("required startup model failed to load") == tries  # no more


def test_an_archive_that_can_never_load_keeps_a_required_server_unready(tmp_path: Path) -> None:
    store = _store(tmp_path, tmp_path / "present")
    (tmp_path / "present").touch()
    models = ["needsfile.mar", "broken.mar"]
    with serve(
        store, tmp_path / "run", models=models, properties=REQUIRED, healthy=False
    ) as server:
        _wait(lambda: "required startup models are not serving" in server.log(), 60, "no report")
        time.sleep(2)
        assert _ping(server) == (500, "Unhealthy", "Unhealthy")
        assert "broken.mar" in server.log() and "trying again" not in server.log()
        served = httpx.post(f"{server.inference}/predictions/needsfile", json={"x": 1})
        assert served.status_code == 200  # the one that loaded serves all the same


def test_without_the_key_a_model_that_cannot_load_is_skipped(tmp_path: Path) -> None:
    store = _store(tmp_path, tmp_path / "never")
    properties = {"disable_token_authorization": "true"}
    with serve(store, tmp_path / "run", models=["needsfile.mar"], properties=properties) as server:
        assert _ping(server) == (200, "Healthy", "Healthy")
        listed = httpx.get(f"{server.management}/models").json()
        assert listed == {"models": []}
        time.sleep(2)
        assert "trying again" not in server.log()


def test_sigterm_while_a_required_model_is_retried_stops_at_once(tmp_path: Path) -> None:
    store = _store(tmp_path, tmp_path / "never")
    with serve(
        store, tmp_path / "run", models=["needsfile.mar"], properties=REQUIRED, healthy=False
    ) as server:
        _wait(lambda: "trying again" in server.log(), 60, "the failed load was not retried")
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 10  # the retry's wait does not hold the exit
        assert '"message": "stopped"' in server.log()


def test_a_required_model_registered_through_the_api_meanwhile_counts_as_serving(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "weights-arrived"
    store = _store(tmp_path, marker)
    properties = {**REQUIRED, "enable_model_api": "true"}
    with serve(
        store, tmp_path / "run", models=["needsfile.mar"], properties=properties, healthy=False
    ) as server:
        # the third failed retry waits 8 s: the registration below ends well before the next
        _wait(lambda: server.log().count("trying again") >= 3, 60, "no third retry")
        marker.touch()
        registered = httpx.post(
            f"{server.management}/models",
            params={"url": "needsfile.mar", "initial_workers": 1, "synchronous": "true"},
            timeout=60,
        )
        assert registered.status_code == 200, registered.text  # before the retry (else 409)
        _wait(lambda: _ping(server)[0] == 200, 30, "the retry did not see it registered")
        tries = server.log().count("trying again")
        time.sleep(2)
        assert server.log().count("trying again") == tries
