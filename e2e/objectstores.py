"""Real object stores on loopback for the storage tests: versitygw (S3) and fake-gcs-server (GCS).

Both are built from the Go module proxy into the versioned cache (e2e/localcluster/toolchain.py,
`make toolchain`). Each instance owns its ports, its state folder and its process, which
`stop()` ends by pid. versitygw checks SigV4 signatures against the access keys
written here (`ACCESS_KEY`/`SECRET_KEY`), so wrong credentials are refused by a real server.
fake-gcs-server does not check credentials at all (tests say so where it matters) and writes an
access log line per request, which the tests read to see whether a fetch touched the store.
`pause()`/`resume()` (SIGSTOP/SIGCONT) make a real server stall mid-conversation: the kernel
still accepts connections, nothing answers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import httpx

from e2e.localcluster.toolchain import FAKE_GCS_SERVER, VERSITYGW
from e2e.support import Started, free_port, terminate, wait_for

ACCESS_KEY = "marfleet-test-key"
SECRET_KEY = "marfleet-test-secret-0123456789"


class _Server(Started):
    def __init__(self, workdir: Path, host: str = "127.0.0.1") -> None:
        """`host`: the address to listen on (the real node's pods reach the host's)."""
        self.workdir = workdir
        self.host = host
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "server.log"

    def _spawn(self, command: list[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"{self.log.read_text()[-3000:]}\nthe store exited")

    def pause(self) -> None:
        assert self._process is not None
        os.killpg(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        os.killpg(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None:
            self.resume()
            terminate(self._process, grace=10)
            self._process = None
        shutil.rmtree(self.workdir, ignore_errors=True)


class VersityS3(_Server):
    """versitygw's S3 gateway over a posix folder (each sub-folder a bucket), one root user."""

    def start(self) -> None:
        binary = VERSITYGW.path("versitygw")
        if not binary.exists():
            raise RuntimeError(f"{binary} is not built: run `make toolchain`")
        self.port = free_port()
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [
                str(binary),
                f"--port={self.host}:{self.port}",
                f"--access={ACCESS_KEY}",
                f"--secret={SECRET_KEY}",
                "--region=us-east-1",
                f"--access-log={self.workdir / 'access.log'}",
                "posix",
                str(data),
            ]
        )
        wait_for(self._ready, 60, "versitygw's S3 gateway")

    def _ready(self) -> bool:
        self._alive()
        try:
            # An unsigned request is answered (403) once the gateway serves S3.
            return httpx.get(f"{self.endpoint}/", timeout=2).status_code in (200, 403)
        except httpx.HTTPError:
            return False

    def put(self, bucket: str, files: dict[str, Path]) -> None:
        """Create `bucket` and upload files (key -> path) with the client library, signed
        with the gateway's keys (obstore; CreateBucket through a URL it presigned)."""
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            bucket,
            endpoint=self.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region="us-east-1",
            client_options={"allow_http": True},
        )
        created = httpx.put(obstore.sign(store, "PUT", "", timedelta(minutes=5)), timeout=10)
        if created.status_code != 200:
            raise RuntimeError(f"CreateBucket {bucket}: {created.status_code} {created.text}")
        for key, path in files.items():
            obstore.put(store, key, path.read_bytes())


class FakeGCS(_Server):
    """fake-gcs-server over plain HTTP, objects in memory, one access-log line per request."""

    def start(self) -> None:
        binary = FAKE_GCS_SERVER.path("fake-gcs-server")
        if not binary.exists():
            raise RuntimeError(f"{binary} is not built: run `make toolchain`")
        self.port = free_port()
        self._spawn(
            [
                str(binary),
                "-scheme=http",
                "-host=127.0.0.1",
                f"-port={self.port}",
                "-backend=memory",
                f"-public-host=127.0.0.1:{self.port}",
                "-log-level=info",
            ]
        )
        wait_for(self._ready, 30, "fake-gcs-server")

    def _ready(self) -> bool:
        self._alive()
        try:
            with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def create_bucket(self, name: str) -> None:
        httpx.post(f"{self.endpoint}/storage/v1/b", json={"name": name}).raise_for_status()

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        """Through the GCS JSON API's media upload, as gsutil and the client libraries do."""
        httpx.post(
            f"{self.endpoint}/upload/storage/v1/b/{bucket}/o",
            params={"uploadType": "media", "name": name},
            content=data,
        ).raise_for_status()

    def requests(self) -> list[str]:
        """The request lines of the access log ("GET /bucket/key HTTP/1.1"), oldest first."""
        return [
            line.split('\\"')[1]
            for line in self.log.read_text(errors="replace").splitlines()
            if '\\"' in line
        ]
