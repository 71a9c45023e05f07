"""`marfleet fetch` from object storage: s3:// against versitygw's S3 gateway (it checks SigV4
keys) and gs:// against fake-gcs-server, both real servers on loopback started once for this
module (e2e/objectstores.py). The CLI runs as the init container runs it, a subprocess with
credentials in its environment; archives are uploaded with the same client library.

fake-gcs-server accepts any credentials, so refused credentials are tested against S3 only.
A stalled store is the real server stopped with SIGSTOP (connections are accepted, nothing
answers); the node cache's "no request to the store" is checked the same way for S3 and in
fake-gcs-server's access log for GCS.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.objectstores import ACCESS_KEY, SECRET_KEY, FakeGCS, VersityS3

pytestmark = pytest.mark.slow

MARFLEET = str(Path(sys.executable).with_name("marfleet"))
ARCHIVE = os.urandom(2 << 20)
DIGEST = hashlib.sha256(ARCHIVE).hexdigest()
FOLDER = {"MAR-INF/MANIFEST.json": b'{"model": {}}', "weights/w.bin": os.urandom(1 << 16)}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VersityS3]:
    files = tmp_path_factory.mktemp("s3-files")
    uploads = {"resnet/resnet.mar": ARCHIVE}
    uploads.update({f"store/resnet/{name}": data for name, data in FOLDER.items()})
    paths = {}
    for index, (key, data) in enumerate(uploads.items()):
        paths[key] = files / str(index)
        paths[key].write_bytes(data)
    with VersityS3(tmp_path_factory.mktemp("versitygw")) as server:
        server.put("models", paths)
        yield server


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGCS]:
    with FakeGCS(tmp_path_factory.mktemp("fake-gcs")) as server:
        server.create_bucket("models")
        server.upload("models", "resnet/resnet.mar", ARCHIVE)
        for name, data in FOLDER.items():
            server.upload("models", f"store/resnet/{name}", data)
        yield server


def run_fetch(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, list[dict[str, Any]], str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_"))}
    result = subprocess.run(
        [MARFLEET, "fetch", *args, "--backoff", "0.05", "--progress-interval", "0"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
    )
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return result.returncode, events, result.stderr


def s3_env(server: VersityS3, secret: str = SECRET_KEY) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": secret,
    }


def gcs_args(server: FakeGCS) -> tuple[str, ...]:
    return ("--endpoint", server.endpoint, "--anonymous")


# --- S3 -------------------------------------------------------------------------------------


def test_s3_archive_with_keys_from_the_environment(s3: VersityS3, tmp_path: Path) -> None:
    code, events, _ = run_fetch(
        "s3://models/resnet/resnet.mar", str(tmp_path), "--sha256", DIGEST, env=s3_env(s3)
    )
    assert code == 0, events
    assert (tmp_path / "resnet.mar").read_bytes() == ARCHIVE
    assert events[-1]["event"] == "done" and events[-1]["sha256"] == DIGEST
    assert any(e["event"] == "progress" for e in events)


def test_s3_prefix_and_a_mounted_credentials_file(s3: VersityS3, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(credentials)}
    code, events, _ = run_fetch(
        "s3://models/store/resnet/",
        str(tmp_path / "store"),
        "--endpoint",
        s3.endpoint,
        "--addressing",
        "path",
        env=env,
    )
    assert code == 0, events
    placed = tmp_path / "store" / "resnet"
    assert {str(p.relative_to(placed)) for p in placed.rglob("*") if p.is_file()} == set(FOLDER)
    assert (placed / "weights/w.bin").read_bytes() == FOLDER["weights/w.bin"]
    assert events[-1]["files"] == 2


def test_s3_wrong_secret_names_the_bucket_and_reason_not_the_secret(
    s3: VersityS3, tmp_path: Path
) -> None:
    wrong = "wrong-secret-value-987654321"
    code, events, stderr = run_fetch(
        "s3://models/resnet/resnet.mar", str(tmp_path), env=s3_env(s3, secret=wrong)
    )
    assert code == 1
    error = events[-1]["error"]
    assert "s3 bucket 'models' refused access to 'resnet/resnet.mar'" in error
    assert "SignatureDoesNotMatch" in error
    assert wrong not in stderr and SECRET_KEY not in stderr
    assert [e["event"] for e in events].count("retry") == 0  # not worth retrying
    assert list(tmp_path.iterdir()) == []


def test_s3_anonymous_is_refused_by_a_private_bucket(s3: VersityS3, tmp_path: Path) -> None:
    code, events, _ = run_fetch(
        "s3://models/resnet/resnet.mar", str(tmp_path), "--endpoint", s3.endpoint, "--anonymous"
    )
    assert code == 1
    assert "s3 bucket 'models' refused access" in events[-1]["error"]


def test_s3_missing_object_is_a_clear_error(s3: VersityS3, tmp_path: Path) -> None:
    code, events, _ = run_fetch("s3://models/resnet/none.mar", str(tmp_path), env=s3_env(s3))
    assert code == 1
    assert "s3 bucket 'models' has no object 'resnet/none.mar'" in events[-1]["error"]
    assert list(tmp_path.iterdir()) == []


def test_s3_checksum_mismatch_places_nothing(s3: VersityS3, tmp_path: Path) -> None:
    code, events, _ = run_fetch(
        "s3://models/resnet/resnet.mar", str(tmp_path), "--sha256", "b" * 64, env=s3_env(s3)
    )
    assert code == 1
    assert "sha256 mismatch" in events[-1]["error"]
    assert list(tmp_path.iterdir()) == []


def test_s3_stalled_store_ends_at_the_deadline(s3: VersityS3, tmp_path: Path) -> None:
    s3.pause()
    try:
        started = time.monotonic()
        code, events, _ = run_fetch(
            "s3://models/resnet/resnet.mar",
            str(tmp_path),
            "--stall-timeout",
            "1",
            "--deadline",
            "3",
            env=s3_env(s3),
        )
        elapsed = time.monotonic() - started
    finally:
        s3.resume()
    assert code == 1, events
    assert "deadline of 3s" in events[-1]["error"] or "timed out" in events[-1]["error"]
    assert elapsed < 20
    assert list(tmp_path.iterdir()) == []


def test_s3_second_fetch_on_the_node_is_a_cache_hit(s3: VersityS3, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ("s3://models/resnet/resnet.mar", "--sha256", DIGEST, "--cache-dir", str(cache))
    code, events, _ = run_fetch(args[0], str(tmp_path / "pod-1"), *args[1:], env=s3_env(s3))
    assert code == 0, events
    s3.pause()  # any request to the store would now hang until the deadline
    try:
        code, events, _ = run_fetch(
            args[0], str(tmp_path / "pod-2"), *args[1:], "--deadline", "5", env=s3_env(s3)
        )
    finally:
        s3.resume()
    assert code == 0, events
    assert events[-1]["event"] == "cache-hit"
    assert (tmp_path / "pod-2" / "resnet.mar").read_bytes() == ARCHIVE


# --- GCS ------------------------------------------------------------------------------------


def test_gcs_archive_and_prefix(gcs: FakeGCS, tmp_path: Path) -> None:
    code, events, _ = run_fetch(
        "gs://models/resnet/resnet.mar", str(tmp_path), "--sha256", DIGEST, *gcs_args(gcs)
    )
    assert code == 0, events
    assert (tmp_path / "resnet.mar").read_bytes() == ARCHIVE
    code, events, _ = run_fetch("gs://models/store/resnet/", str(tmp_path), *gcs_args(gcs))
    assert code == 0, events
    assert (tmp_path / "resnet" / "MAR-INF/MANIFEST.json").read_bytes() == FOLDER[
        "MAR-INF/MANIFEST.json"
    ]


def test_gcs_missing_object_and_checksum_mismatch(gcs: FakeGCS, tmp_path: Path) -> None:
    code, events, _ = run_fetch("gs://models/resnet/none.mar", str(tmp_path), *gcs_args(gcs))
    assert code == 1
    assert "gs bucket 'models' has no object 'resnet/none.mar'" in events[-1]["error"]
    code, events, _ = run_fetch(
        "gs://models/resnet/resnet.mar", str(tmp_path), "--sha256", "c" * 64, *gcs_args(gcs)
    )
    assert code == 1
    assert "sha256 mismatch" in events[-1]["error"]
    assert list(tmp_path.iterdir()) == []


def test_gcs_cache_hit_makes_no_request_and_generation_keys_need_no_download(
    gcs: FakeGCS, tmp_path: Path
) -> None:
    cache = ("--cache-dir", str(tmp_path / "cache"))
    uri = "gs://models/resnet/resnet.mar"
    assert run_fetch(uri, str(tmp_path / "a"), "--sha256", DIGEST, *cache, *gcs_args(gcs))[0] == 0
    before = len(gcs.requests())
    code, events, _ = run_fetch(
        uri, str(tmp_path / "b"), "--sha256", DIGEST, *cache, *gcs_args(gcs)
    )
    assert code == 0 and events[-1]["event"] == "cache-hit", events
    assert gcs.requests()[before:] == []
    # Without sha256 the key is the object's ETag: one metadata request, no download.
    assert run_fetch(uri, str(tmp_path / "c"), *cache, *gcs_args(gcs))[0] == 0
    before = len(gcs.requests())
    code, events, _ = run_fetch(uri, str(tmp_path / "d"), *cache, *gcs_args(gcs))
    assert code == 0 and events[-1]["event"] == "cache-hit", events
    assert [line.split()[0] for line in gcs.requests()[before:]] == ["HEAD"]
    assert (tmp_path / "d" / "resnet.mar").read_bytes() == ARCHIVE


def test_gcs_service_account_key_from_the_environment(gcs: FakeGCS, tmp_path: Path) -> None:
    """The variable the operator fills from the Secret (GOOGLE_SERVICE_ACCOUNT_KEY) is what the
    client reads: here a test key naming the fake server (no endpoint flag) and no OAuth, since
    fake-gcs-server checks no credentials; a broken key is a clear error without its content."""
    key = {
        "gcs_base_url": gcs.endpoint,
        "disable_oauth": True,
        "client_email": "",
        "private_key": "",
        "private_key_id": "",
    }
    env = {"GOOGLE_SERVICE_ACCOUNT_KEY": json.dumps(key)}
    code, events, _ = run_fetch("gs://models/resnet/resnet.mar", str(tmp_path), env=env)
    assert code == 0, events
    assert (tmp_path / "resnet.mar").read_bytes() == ARCHIVE
    broken = {"client_email": "reader@example", "private_key": "PRIVATE-KEY-MATERIAL"}
    code, events, stderr = run_fetch(
        "gs://models/resnet/resnet.mar",
        str(tmp_path / "other"),
        env={"GOOGLE_SERVICE_ACCOUNT_KEY": json.dumps(broken)},
    )
    assert code == 1
    assert (
        "gs bucket 'models': the store's settings or credentials cannot be used"
        in (events[-1]["error"])
    )
    assert "PRIVATE-KEY-MATERIAL" not in stderr
