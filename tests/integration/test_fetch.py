"""`marfleet fetch` as the init container runs it: a real subprocess against a real HTTP server
that fails in the ways real servers fail (5xx, a body cut short, 404)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

MARFLEET = str(Path(sys.executable).with_name("marfleet"))
ARCHIVE = os.urandom(3 << 20)


class Server:
    """Serves ARCHIVE at /<anything>.mar; `script[path]` lists what the next requests get."""

    def __init__(self) -> None:
        self.script: dict[str, list[str]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                plan = server.script.get(self.path, [])
                action = plan.pop(0) if plan else "ok"
                if action == "404":
                    self.send_error(404)
                elif action == "503":
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(ARCHIVE)))
                    self.end_headers()
                    body = ARCHIVE[: len(ARCHIVE) // 3] if action == "truncate" else ARCHIVE
                    self.wfile.write(body)
                    if action == "truncate":
                        self.close_connection = True

            def log_message(self, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        thread.join()


def run_fetch(*args: str) -> tuple[int, list[dict[str, Any]]]:
    result = subprocess.run(
        [MARFLEET, "fetch", *args, "--backoff", "0.05", "--progress-interval", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return result.returncode, events


def test_download_verifies_and_reports_progress(server: Server, tmp_path: Path) -> None:
    digest = hashlib.sha256(ARCHIVE).hexdigest()
    code, events = run_fetch(f"{server.url}/m/resnet.mar", str(tmp_path), "--sha256", digest)
    assert code == 0, events
    assert (tmp_path / "resnet.mar").read_bytes() == ARCHIVE
    assert [p.name for p in tmp_path.iterdir()] == ["resnet.mar"]
    names = [e["event"] for e in events]
    assert names[0] == "start" and names[-1] == "done"
    assert "progress" in names
    assert events[-1]["sha256"] == digest


def test_transient_failures_are_retried(server: Server, tmp_path: Path) -> None:
    server.script["/m.mar"] = ["503", "truncate"]
    code, events = run_fetch(f"{server.url}/m.mar", str(tmp_path))
    assert code == 0, events
    retries = [e for e in events if e["event"] == "retry"]
    assert len(retries) == 2
    assert retries[0]["error"] == "HTTP 503"
    assert "RemoteProtocolError" in retries[1]["error"]
    assert len(server.requests) == 3
    assert (tmp_path / "m.mar").read_bytes() == ARCHIVE


def test_not_found_fails_at_once_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    server.script["/gone.mar"] = ["404"]
    code, events = run_fetch(f"{server.url}/gone.mar", str(tmp_path))
    assert code == 1
    assert "HTTP 404" in events[-1]["error"] and "check model.uri" in events[-1]["error"]
    assert server.requests == ["/gone.mar"]
    assert list(tmp_path.iterdir()) == []


def test_gives_up_after_the_configured_attempts(server: Server, tmp_path: Path) -> None:
    server.script["/m.mar"] = ["503"] * 5
    code, events = run_fetch(f"{server.url}/m.mar", str(tmp_path), "--attempts", "3")
    assert code == 1
    assert (
        events[-1]["error"].startswith("giving up on") and "after 3 attempts" in events[-1]["error"]
    )
    assert len(server.requests) == 3
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_is_refused(server: Server, tmp_path: Path) -> None:
    code, events = run_fetch(f"{server.url}/m.mar", str(tmp_path), "--sha256", "a" * 64)
    assert code == 1
    assert "sha256 mismatch" in events[-1]["error"]
    assert list(tmp_path.iterdir()) == []


def test_unsupported_scheme_is_a_usage_error(tmp_path: Path) -> None:
    code, events = run_fetch("s3://bucket/m.mar", str(tmp_path))
    assert code == 2
    assert "scheme 's3' is not supported yet" in events[-1]["error"]
