"""The model lifecycle under failure, against a real `marfleet serve`: registrations that fail,
hang, are abandoned by their client or deleted while loading leave nothing behind; worker counts
are capped; queued requests have a deadline; bad startup archives fail alone.

One server for the module, started with two good and two bad startup archives; its TMPDIR is
its own, so what registrations unpack can be counted. Startup and response timeouts are short
(hang: startupTimeout 4 s; slow: responseTimeout 3 s).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from tests.integration.server_archives import HANDLERS, build_store
from tests.serving import Server, archive, serve

MAX_WORKERS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("lifecycle")
    store = build_store(root)
    config = root / "hang-config.yaml"
    config.write_text(yaml.safe_dump({"startupTimeout": 4, "minWorkers": 1}))
    archive(store, "hang", HANDLERS / "hang.py", config_file=config)
    archive(store, "slowload", HANDLERS / "slowload.py")
    properties = {
        "enable_model_api": "true",
        "disable_token_authorization": "true",
        "worker_threads": "1",
        "max_workers_per_model": str(MAX_WORKERS),
    }
    tmp = root / "tmp"
    tmp.mkdir()
    models = ["echo.mar", "broken.mar", "loadfail.mar", "victim.mar", "slow.mar"]
    with serve(
        store, root / "run", models=models, properties=properties, env={"TMPDIR": str(tmp)}
    ) as srv:
        yield srv


def unpacked(server: Server) -> int:
    """How many model directories the server holds unpacked right now."""
    (root,) = (server.workdir.parent / "tmp").glob("marfleet-models-*")
    return len(list(root.iterdir()))


def model_status(server: Server, name: str) -> int:
    return httpx.get(f"{server.management}/models/{name}").status_code


def wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def register(server: Server, query: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.management}/models?{query}", timeout=timeout)


def test_bad_startup_archives_fail_alone(server: Server) -> None:
    names = [m["modelName"] for m in httpx.get(f"{server.management}/models").json()["models"]]
    assert names == ["echo", "slow", "victim"]
    assert httpx.get(f"{server.inference}/ping").json() == {"status": "Healthy"}
    assert httpx.post(f"{server.inference}/predictions/echo", json={"a": 1}).status_code == 200


@pytest.mark.parametrize("name", ["bad name", "a\nb", "-lead", "x" * 300])
def test_model_names_are_validated(server: Server, name: str) -> None:
    response = httpx.post(
        f"{server.management}/models", params={"url": "victim.mar", "model_name": name}
    )
    assert response.status_code == 400 and "invalid model name" in response.json()["message"]


def test_worker_counts_are_capped(server: Server) -> None:
    before = unpacked(server)
    refused = register(server, "url=victim.mar&model_name=many&initial_workers=50")
    assert refused.status_code == 400
    assert "max_workers_per_model" in refused.json()["message"]
    assert model_status(server, "many") == 404 and unpacked(server) == before
    scaled = httpx.put(f"{server.management}/models/victim?min_worker={MAX_WORKERS + 1}")
    assert scaled.status_code == 400 and "max_workers_per_model" in scaled.json()["message"]


def test_a_failed_registration_leaves_nothing_and_can_be_retried(server: Server) -> None:
    before = unpacked(server)
    for _ in range(2):  # a second try is the same 500, not a 409
        failed = register(server, "url=loadfail.mar")
        assert failed.status_code == 500, failed.text
        assert model_status(server, "loadfail") == 404
        assert unpacked(server) == before
    assert httpx.get(f"{server.inference}/ping").status_code == 200


def test_an_asynchronous_registration_that_cannot_load_is_removed(server: Server) -> None:
    accepted = register(server, "url=loadfail.mar&model_name=lf2&synchronous=false")
    assert accepted.status_code == 202
    wait_until(lambda: model_status(server, "lf2") == 404, 30, "lf2 stayed registered")
    assert httpx.get(f"{server.inference}/ping").status_code == 200


def test_a_hanging_initialize_is_bounded_by_startup_timeout_once(server: Server) -> None:
    before = unpacked(server)
    started = time.monotonic()
    failed = register(server, "url=hang.mar")
    elapsed = time.monotonic() - started
    assert failed.status_code == 500 and "within 4 s" in failed.json()["message"]
    assert elapsed < 7, f"{elapsed:.1f} s: startupTimeout (4 s) was waited more than once"
    assert model_status(server, "hang") == 404 and unpacked(server) == before


def test_delete_of_a_loading_model_answers_at_once_and_ping_stays_healthy(server: Server) -> None:
    before = unpacked(server)
    accepted = register(server, "url=hang.mar&model_name=hang2&synchronous=false")
    assert accepted.status_code == 202
    time.sleep(1)
    assert httpx.get(f"{server.inference}/ping").status_code == 200  # loading is not unhealthy
    started = time.monotonic()
    removed = httpx.delete(f"{server.management}/models/hang2", timeout=30)
    assert removed.status_code == 200
    assert time.monotonic() - started < 2
    assert model_status(server, "hang2") == 404
    wait_until(lambda: unpacked(server) == before, 5, "hang2's files stayed")


def test_a_client_that_leaves_a_registration_leaves_nothing(server: Server) -> None:
    before = unpacked(server)
    with pytest.raises(httpx.ReadTimeout):
        register(server, "url=slowload.mar", timeout=1.5)  # loading takes 4 s
    wait_until(lambda: unpacked(server) == before, 10, "the abandoned model's files stayed")
    assert model_status(server, "slowload") == 404
    registered = register(server, "url=slowload.mar")
    assert registered.status_code == 200, registered.text
    assert httpx.post(f"{server.inference}/predictions/slowload", json={"x": 1}).json() == {"x": 1}


def test_queued_requests_get_503_after_the_response_timeout(server: Server) -> None:
    # slow: one worker, batch size 1, responseTimeout 3 s; each request sleeps 2.2 s
    with ThreadPoolExecutor(3) as pool:
        futures = []
        for _ in range(3):
            futures.append(
                pool.submit(
                    httpx.post,
                    f"{server.inference}/predictions/slow",
                    json={"sleep": 2.2},
                    timeout=30,
                )
            )
            time.sleep(0.1)
        responses = [future.result() for future in futures]
    assert [r.status_code for r in responses] == [200, 200, 503]
    assert "responseTimeout" in responses[2].json()["message"]
    assert responses[2].headers["retry-after"] == "1"


def test_a_request_right_after_an_idle_worker_died_waits_for_the_restart(server: Server) -> None:
    for _ in range(3):
        (described,) = httpx.get(f"{server.management}/models/victim").json()
        pid = described["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        response = httpx.post(f"{server.inference}/predictions/victim", json={"n": 1}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["pid"] != pid
