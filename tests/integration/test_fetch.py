"""`marfleet fetch` as the init container runs it: a real subprocess against a real HTTP server
that fails in the ways real servers fail (5xx, a body cut short, 404, redirects that lead
nowhere, trickling and stalled bodies); the limits are checked in-process against the same
server (the management API's registration by URL calls the same `fetch`)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from marfleet.runtime.storage.fetch import FetchError, FetchSettings, fetch

MARFLEET = str(Path(sys.executable).with_name("marfleet"))
ARCHIVE = os.urandom(3 << 20)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("MAR-INF/MANIFEST.json", "{}")
        archive.writestr("weights.bin", os.urandom(1 << 20))
    return buffer.getvalue()


ZIP_ARCHIVE = _zip()


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
                elif action.startswith("redirect:"):
                    self.send_response(302)
                    self.send_header("Location", action.removeprefix("redirect:"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    plan.insert(0, action)  # the same answer every time (a loop)
                elif action == "503-bad-retry-after":
                    self.send_response(503)
                    self.send_header("Retry-After", "\xb2")  # a superscript two, latin-1
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif action == "huge":
                    self.send_response(200)
                    self.send_header("Content-Length", str(1 << 40))
                    self.end_headers()
                elif action in ("trickle", "stall"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(ARCHIVE)))
                    self.end_headers()
                    for _ in range(100 if action == "trickle" else 1):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.2 if action == "trickle" else 20)
                elif action in ("unframed", "unframed-cut"):
                    body = ZIP_ARCHIVE
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(body[: len(body) - 100] if action == "unframed-cut" else body)
                    self.close_connection = True
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
    code, events = run_fetch("ftp://host/m.mar", str(tmp_path))
    assert code == 2
    assert "scheme 'ftp' is not supported" in events[-1]["error"]


def test_redirect_loops_and_file_redirects_are_clean_errors(server: Server, tmp_path: Path) -> None:
    server.script["/loop.mar"] = ["redirect:/loop.mar"]
    code, events = run_fetch(f"{server.url}/loop.mar", str(tmp_path), "--max-redirects", "3")
    assert code == 1, events
    assert "redirected more than 3 times" in events[-1]["error"]
    assert server.requests == ["/loop.mar"] * 4
    server.requests.clear()
    server.script["/f.mar"] = ["redirect:file:///etc/passwd"]
    code, events = run_fetch(f"{server.url}/f.mar", str(tmp_path))
    assert code == 1, events
    assert "redirected to file:///etc/passwd: only http(s) redirects" in events[-1]["error"]
    assert server.requests == ["/f.mar"]  # refused, not retried
    assert list(tmp_path.iterdir()) == []


# --- limits and placement, in-process (the same `fetch` the management API calls) ---------


class Events(list[tuple[str, dict[str, Any]]]):
    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        self.append((event, fields))


def fetch_here(url: str, dest: Path, sha256: str | None = None, **limits: Any) -> Events:
    events = Events()
    settings = FetchSettings(backoff_seconds=0.01, progress_interval_seconds=0, **limits)
    fetch(url, dest, sha256=sha256, settings=settings, report=events)
    return events


def test_malformed_retry_after_is_ignored(server: Server, tmp_path: Path) -> None:
    server.script["/m.mar"] = ["503-bad-retry-after"]
    events = fetch_here(f"{server.url}/m.mar", tmp_path)
    assert [f["delay"] for e, f in events if e == "retry"] == [0.01]
    assert (tmp_path / "m.mar").read_bytes() == ARCHIVE


def test_placed_files_are_not_world_readable(server: Server, tmp_path: Path) -> None:
    fetch_here(f"{server.url}/m.mar", tmp_path)
    assert stat.S_IMODE((tmp_path / "m.mar").stat().st_mode) == 0o640


def test_checksum_is_verified_before_the_file_is_renamed_into_place(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renamed: list[bytes] = []
    real_replace = os.replace

    def watching_replace(src: Any, dst: Any) -> None:
        if Path(dst) == tmp_path / "m.mar":
            renamed.append(Path(src).read_bytes())
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch_here(f"{server.url}/m.mar", tmp_path, sha256="a" * 64)
    assert renamed == []  # the server never had a moment to load the wrong archive
    assert list(tmp_path.iterdir()) == []


def test_existing_file_that_does_not_match_is_fetched_again(server: Server, tmp_path: Path) -> None:
    (tmp_path / "m.mar").write_bytes(b"an older archive")
    digest = hashlib.sha256(ARCHIVE).hexdigest()
    events = fetch_here(f"{server.url}/m.mar", tmp_path, sha256=digest)
    assert [e for e, _ in events][:2] == ["mismatch", "start"]
    assert (tmp_path / "m.mar").read_bytes() == ARCHIVE


def test_announced_size_over_the_cap_is_refused_at_once(server: Server, tmp_path: Path) -> None:
    server.script["/m.mar"] = ["huge"]
    with pytest.raises(FetchError, match=r"over the size cap of 1048576 bytes"):
        fetch_here(f"{server.url}/m.mar", tmp_path, max_bytes=1 << 20)
    assert server.requests == ["/m.mar"]
    assert list(tmp_path.iterdir()) == []


def test_unannounced_body_over_the_cap_is_cut_off(server: Server, tmp_path: Path) -> None:
    server.script["/m.mar"] = ["unframed"]
    with pytest.raises(FetchError, match=r"passed the size cap of 65536 bytes"):
        fetch_here(f"{server.url}/m.mar", tmp_path, max_bytes=1 << 16)
    assert list(tmp_path.iterdir()) == []


def test_trickling_body_ends_at_the_deadline(server: Server, tmp_path: Path) -> None:
    server.script["/m.mar"] = ["trickle"] * 5
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"deadline of 1\.5s"):
        fetch_here(f"{server.url}/m.mar", tmp_path, deadline_seconds=1.5, stall_seconds=1.0)
    assert time.monotonic() - started < 6
    assert list(tmp_path.iterdir()) == []


def test_stalled_body_fails_the_attempt(server: Server, tmp_path: Path) -> None:
    server.script["/m.mar"] = ["stall", "stall"]
    with pytest.raises(FetchError, match=r"after 2 attempts: ReadTimeout"):
        fetch_here(f"{server.url}/m.mar", tmp_path, stall_seconds=0.5, attempts=2)
    assert list(tmp_path.iterdir()) == []


def test_cut_body_without_length_is_never_placed(server: Server, tmp_path: Path) -> None:
    server.script["/m.mar"] = ["unframed-cut", "unframed-cut"]
    with pytest.raises(FetchError, match="without Content-Length or chunked framing"):
        fetch_here(f"{server.url}/m.mar", tmp_path, attempts=2)
    assert list(tmp_path.iterdir()) == []
    server.script["/m.mar"] = ["unframed"]  # complete: its central directory is there
    fetch_here(f"{server.url}/m.mar", tmp_path)
    assert (tmp_path / "m.mar").read_bytes() == ZIP_ARCHIVE


def test_cancelled_fetch_stops_and_places_nothing(server: Server, tmp_path: Path) -> None:
    server.script["/m.mar"] = ["trickle"]
    started = time.monotonic()
    with pytest.raises(FetchError, match="cancelled"):
        fetch_here(
            f"{server.url}/m.mar", tmp_path, cancelled=lambda: time.monotonic() - started > 0.5
        )
    assert list(tmp_path.iterdir()) == []
