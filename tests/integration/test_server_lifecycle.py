"""The model lifecycle under failure, against a real `marfleet serve`: registrations that fail,
hang, are abandoned by their client or deleted while loading leave nothing behind; worker counts
are capped; queued requests have a deadline; bad startup archives fail alone.

One server for the module, started with three good (one slow to load) and three bad startup
archives; its TMPDIR is its own, so what registrations unpack can be counted. Startup and
response timeouts are short (hang: startupTimeout 4 s; slow: responseTimeout 3 s).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import psutil
import pytest
import yaml

from tests.integration.server_archives import HANDLERS, build_store
from tests.serving import Server, archive, serve

MAX_WORKERS = 3
MAX_DOWNLOAD = 1_000_000
MAX_DOWNLOADS = 6  # as many as the default thread pool's threads on a 2-core machine


class Archives(BaseHTTPRequestHandler):
    """A model host that misbehaves on purpose, one way per path; loopback only."""

    closed: ClassVar[list[str]] = []  # paths whose client (the server) hung up mid-body
    trickling: ClassVar[list[str]] = []  # paths whose trickle began
    served: ClassVar[dict[str, bytes]] = {}  # name -> the archive it serves, as a test set it

    def do_GET(self) -> None:
        name = self.path.strip("/")
        if name in self.served:
            self._head({"Content-Length": str(len(self.served[name]))})
            self.wfile.write(self.served[name])
        elif name == "big.mar":  # announces more than the cap
            self._head({"Content-Length": str(10 * MAX_DOWNLOAD)})
        elif name == "short.mar":  # promises 1000 bytes, sends 100
            self._head({"Content-Length": "1000"})
            self.wfile.write(b"PK\x03\x04" + b"x" * 96)
        elif name == "cut.mar":  # no length, no chunking: ends when the connection does
            self._head({"Connection": "close"})
            self.wfile.write(b"PK\x03\x04" + b"x" * 96)
        elif name == "stall.mar":  # the head, then nothing
            self._head({"Content-Length": "1000"})
            self.wfile.flush()
            time.sleep(8)
        elif name.startswith("trickle"):  # a byte every 0.2 s, never stalling
            self._head({"Content-Length": "1000"})
            self.trickling.append(name)
            try:
                for _ in range(150):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                self.closed.append(name)
        else:
            self.send_error(404)
        self.close_connection = True

    def _head(self, headers: dict[str, str]) -> None:
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def host() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Archives)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("lifecycle")
    store = build_store(root)
    config = root / "hang-config.yaml"
    config.write_text(yaml.safe_dump({"startupTimeout": 4, "minWorkers": 1}))
    archive(store, "hang", HANDLERS / "hang.py", config_file=config)
    archive(store, "slowload", HANDLERS / "slowload.py")
    tensors = root / "badtensors-config.yaml"
    tensors.write_text(
        yaml.safe_dump({"inputs": [{"name": "x", "datatype": "FP33", "shape": [1]}]})
    )
    archive(store, "badtensors", HANDLERS / "hang.py", config_file=tensors)
    archive(store, "lingering", HANDLERS / "lingering.py")
    archive(store, "crashing", HANDLERS / "crashing.py")
    many = root / "many-config.yaml"
    many.write_text(yaml.safe_dump({"minWorkers": 50, "maxWorkers": 50}))
    archive(store, "many", HANDLERS / "slowload.py", config_file=many)
    properties = {
        "enable_model_api": "true",
        "disable_token_authorization": "true",
        "worker_threads": "1",
        "max_workers_per_model": str(MAX_WORKERS),
        "max_download_size": str(MAX_DOWNLOAD),
        "download_timeout_seconds": "6",
        "download_stall_timeout_seconds": "2",
        "max_concurrent_downloads": str(MAX_DOWNLOADS),
    }
    tmp = root / "tmp"
    tmp.mkdir()
    with zipfile.ZipFile(store / "badutf8.mar", "w") as bad:  # a manifest that is not UTF-8
        bad.writestr("MAR-INF/MANIFEST.json", b'{"model": {"handler": "\xff\xfe"}}')
    models = ["broken.mar", "loadfail.mar", "badutf8.mar", "victim.mar", "slow.mar"]
    models.append("startslow=slowload.mar")  # loads in 4 s: /ping must wait for it
    env = {"TMPDIR": str(tmp)}
    # three workers start at once: on a loaded 2-core machine that can take minutes
    with serve(
        store, root / "run", models=models, properties=properties, env=env, ready_timeout=240
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
    assert names == ["slow", "startslow", "victim"]
    # /ping turned healthy (the fixture waited for it) only once every loadable one served
    for name in names:
        (described,) = httpx.get(f"{server.management}/models/{name}").json()
        assert [w["status"] for w in described["workers"]] == ["READY"], name
    assert unpacked(server) == 3  # what the bad ones unpacked is gone
    assert httpx.get(f"{server.inference}/ping").json() == {"status": "Healthy"}
    assert httpx.post(f"{server.inference}/predictions/victim", json={"a": 1}).status_code == 200


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
    # the archive's own model-config.yaml (minWorkers: 50) is held to the same limit
    archived = register(server, "url=many.mar")
    assert archived.status_code == 400, archived.text
    assert "minWorkers" in archived.json()["message"]
    assert "max_workers_per_model" in archived.json()["message"]
    assert model_status(server, "many") == 404 and unpacked(server) == before


def test_v2_tensors_an_archive_declares_wrongly_are_refused(server: Server) -> None:
    before = unpacked(server)
    refused = register(server, "url=badtensors.mar&initial_workers=1")
    assert refused.status_code == 400, refused.text
    message = refused.json()["message"]
    assert "model-config.yaml inputs[0]: datatype 'FP33' is not one of BOOL" in message
    assert model_status(server, "badtensors") == 404 and unpacked(server) == before


def test_a_failed_registration_leaves_nothing(server: Server) -> None:
    before = unpacked(server)
    failed = register(server, "url=loadfail.mar&initial_workers=1")
    assert failed.status_code == 500, failed.text
    assert model_status(server, "loadfail") == 404
    assert unpacked(server) == before
    assert httpx.get(f"{server.inference}/ping").status_code == 200


def test_a_worker_that_crashes_while_loading_is_named_with_its_signal_and_frames(
    server: Server,
) -> None:
    before = unpacked(server)
    failed = register(server, "url=crashing.mar&initial_workers=1")
    assert failed.status_code == 500, failed.text
    assert "the worker process was killed by SIGSEGV while loading" in failed.json()["message"]
    # the worker's fault handler names where it crashed, in the server's log
    log = server.log()
    assert "Fatal Python error: Segmentation fault" in log
    assert "crashing.py" in log.split("Fatal Python error: Segmentation fault", 1)[1]
    assert model_status(server, "crashing") == 404 and unpacked(server) == before


def test_an_asynchronous_registration_that_cannot_load_is_removed(server: Server) -> None:
    before = unpacked(server)
    # the same name again (after the failure above): accepted, not a 409
    accepted = register(server, "url=loadfail.mar&initial_workers=1&synchronous=false")
    assert accepted.status_code == 202, accepted.text
    wait_until(lambda: model_status(server, "loadfail") == 404, 90, "it stayed registered")
    wait_until(lambda: unpacked(server) == before, 10, "its files stayed")
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

    def loading_pid() -> int:
        (loading,) = httpx.get(f"{server.management}/models/hang2").json()
        return int(loading["workers"][0]["pid"])

    wait_until(lambda: loading_pid() > 0, 10, "no worker process was started")
    pid = loading_pid()
    started = time.monotonic()
    removed = httpx.delete(f"{server.management}/models/hang2", timeout=30)
    assert removed.status_code == 200
    assert time.monotonic() - started < 2
    assert model_status(server, "hang2") == 404
    assert not psutil.pid_exists(pid), "the loading worker was not stopped"
    wait_until(lambda: unpacked(server) == before, 5, "hang2's files stayed")


def test_unregistering_does_not_wait_for_the_worker_interpreter_to_wind_down(
    server: Server,
) -> None:
    # the handler leaves a non-daemon thread running: Python's own exit would wait for it
    registered = register(server, "url=lingering.mar&initial_workers=1")
    assert registered.status_code == 200, registered.text
    (described,) = httpx.get(f"{server.management}/models/lingering").json()
    pid = described["workers"][0]["pid"]
    started = time.monotonic()
    removed = httpx.delete(f"{server.management}/models/lingering", timeout=60)
    elapsed = time.monotonic() - started
    assert removed.status_code == 200, removed.text
    # before, the worker was killed only after shutdown_grace_seconds (30 s)
    assert elapsed < 15, f"DELETE took {elapsed:.1f} s: it waited for the worker to wind down"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_client_that_leaves_a_registration_leaves_nothing(server: Server) -> None:
    before = unpacked(server)
    with pytest.raises(httpx.ReadTimeout):
        register(server, "url=slowload.mar&initial_workers=1", timeout=1.5)  # loading takes 4 s
    wait_until(lambda: unpacked(server) == before, 10, "the abandoned model's files stayed")
    assert model_status(server, "slowload") == 404
    registered = register(server, "url=slowload.mar&initial_workers=1")
    assert registered.status_code == 200, registered.text
    assert httpx.post(f"{server.inference}/predictions/slowload", json={"x": 1}).json() == {"x": 1}


def test_kserve_readiness_is_503_while_the_workers_load(server: Server) -> None:
    """KServe answers both readiness paths 503 until the model can answer, so a readiness probe
    ported from KServe (v1 or v2) keeps the pod out of its Service meanwhile."""
    query = "url=slowload.mar&model_name=loading&initial_workers=1&synchronous=false"
    assert register(server, query).status_code == 202  # its worker loads for 4 s
    for path in ("/v1/models/loading", "/v2/models/loading/ready"):
        answer = httpx.get(server.inference + path)
        assert (answer.status_code, answer.json()) == (503, {"name": "loading", "ready": False})
    wait_until(
        lambda: httpx.get(f"{server.inference}/v1/models/loading").status_code == 200,
        30,
        "the model never turned ready",
    )
    for path in ("/v1/models/loading", "/v2/models/loading/ready"):
        assert httpx.get(server.inference + path).json() == {"name": "loading", "ready": True}
    assert httpx.delete(f"{server.management}/models/loading").status_code == 200


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
    # 6.6 s of work for one worker: whatever waited past 3 s was answered 503 at once
    statuses = [r.status_code for r in responses]
    assert statuses[0] == 200 and 503 in statuses and set(statuses) <= {200, 503}, statuses
    expired = responses[statuses.index(503)]
    assert "responseTimeout" in expired.json()["message"]
    assert expired.headers["retry-after"] == "1"


def test_a_request_right_after_an_idle_worker_died_waits_for_the_restart(server: Server) -> None:
    (described,) = httpx.get(f"{server.management}/models/victim").json()
    pid = described["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    response = httpx.post(f"{server.inference}/predictions/victim", json={"n": 1}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["pid"] != pid


def store_files(server: Server) -> set[str]:
    return {path.name for path in (server.workdir.parent / "store").iterdir()}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("big.mar", "size cap"),
        ("short.mar", "received 100 bytes, expected 1000"),
        ("cut.mar", "not a complete archive"),
        ("stall.mar", "Timeout"),
    ],
)
def test_a_download_that_breaks_a_rule_is_refused_and_never_placed(
    server: Server, host: str, name: str, reason: str
) -> None:
    before, unpacked_before = store_files(server), unpacked(server)
    started = time.monotonic()
    refused = httpx.post(
        f"{server.management}/models", params={"url": f"{host}/{name}"}, timeout=30
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["type"] == "DownloadArchiveException"
    assert reason in refused.json()["message"]
    assert time.monotonic() - started < 5
    assert store_files(server) == before  # nothing placed, no partial file left
    assert unpacked(server) == unpacked_before  # nor a download folder


def test_each_registration_downloads_afresh_and_keeps_no_archive(
    server: Server, host: str, tmp_path: Path
) -> None:
    """A URL whose file changed gives the new archive (TorchServe would take the file it kept
    in the model store from the first registration); neither download stays anywhere."""
    builds = []
    for version in ("1.0", "2.0"):
        (tmp_path / version).mkdir()
        builds.append(
            archive(tmp_path / version, "fresh", HANDLERS / "behaviour.py", version=version)
        )
    store_before, unpacked_before = store_files(server), unpacked(server)
    query = f"url={host}/fresh.mar&initial_workers=0&synchronous=true"
    for build in builds:
        Archives.served["fresh.mar"] = build.read_bytes()
        assert register(server, query).status_code == 200
    described = httpx.get(f"{server.management}/models/fresh/all").json()
    assert sorted(entry["modelVersion"] for entry in described) == ["1.0", "2.0"]
    assert store_files(server) == store_before
    assert unpacked(server) == unpacked_before + 2  # the two models, and no downloads
    for version in ("2.0", "1.0"):  # the default version (the first) goes last
        assert httpx.delete(f"{server.management}/models/fresh/{version}").status_code == 200
    assert unpacked(server) == unpacked_before


def test_downloads_have_a_deadline_a_bound_and_stop_with_their_client(
    server: Server, host: str
) -> None:
    def download(name: str, timeout: float) -> httpx.Response:
        url = f"{server.management}/models"
        return httpx.post(url, params={"url": f"{host}/{name}"}, timeout=timeout)

    with ThreadPoolExecutor(MAX_DOWNLOADS) as pool:
        slow = [pool.submit(download, f"trickle{i}.mar", 30) for i in range(MAX_DOWNLOADS)]
        wait_until(lambda: len(Archives.trickling) == MAX_DOWNLOADS, 5, "downloads never began")
        one_more = download("trickle-more.mar", 5)  # every download slot is taken
        assert one_more.status_code == 503
        assert "max_concurrent_downloads" in one_more.json()["message"]
        # six trickling downloads hold six threads of their own, none that unpacking needs
        other = register(server, "url=victim.mar&model_name=during")  # not by URL
        assert other.status_code == 200, other.text
        assert not any(future.done() for future in slow), "it waited for a download to end"
        for future in slow:  # 150 bytes in 30 s: stopped by the 6 s overall deadline
            response = future.result()
            assert response.status_code == 400 and "deadline" in response.json()["message"]
    with pytest.raises(httpx.ReadTimeout):
        download("trickle-left.mar", 1)  # the client leaves after 1 s
    wait_until(lambda: "trickle-left.mar" in Archives.closed, 5, "the download went on")
