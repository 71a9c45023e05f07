"""Model URIs as the operator and `marfleet fetch` both read them."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path
from typing import Any

import pytest
from marfleet.runtime.storage.fetch import FetchError, FetchSettings, fetch
from marfleet.runtime.storage.uri import (
    ModelURIError,
    archive_filename,
    parse,
    scheme_error,
)


@pytest.mark.parametrize(
    ("uri", "scheme", "location", "path"),
    [
        ("https://models.example/r/resnet.mar", "https", "models.example", "/r/resnet.mar"),
        ("http://10.0.0.1:8000/a.mar", "http", "10.0.0.1:8000", "/a.mar"),
        ("file:///models/a.mar", "file", "", "/models/a.mar"),
        ("pvc://claim-1/dir/a%20b.mar", "pvc", "claim-1", "/dir/a b.mar"),
        ("s3://models/r/resnet.mar", "s3", "models", "/r/resnet.mar"),
        ("gs://my_bucket.example/dir/", "gs", "my_bucket.example", "/dir/"),
    ],
)
def test_parse_supported(uri: str, scheme: str, location: str, path: str) -> None:
    parsed = parse(uri)
    assert (parsed.scheme, parsed.location, parsed.path) == (scheme, location, path)


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("ftp://host/model.mar", "scheme 'ftp' is not supported"),
        ("s3://Bucket/model.mar", "expected s3://<bucket>/<key>"),
        ("gs:///model.mar", "expected gs://<bucket>/<key>"),
        ("s3://bucket/m.mar?versionId=1", "carry no query or credentials"),
        ("s3://key:secret@bucket/m.mar", "s3://bucket/m.mar': s3 URIs carry no query"),
        ("s3://bucket/a/../m/", "may not contain '.' or '..' folders"),
        ("pvc://../etc/m.mar", "expected pvc://<claim>/<path>"),
        ("models/resnet.mar", "has no scheme"),
        ("https:///resnet.mar", "has no host"),
        ("file://host/models/a.mar", "file URIs are absolute"),
        ("pvc:///a.mar", "expected pvc://<claim>/<path>"),
        ("pvc://claim/../etc/passwd", "may not contain '..'"),
        ("pvc://claim/", "must name a file"),
    ],
)
def test_parse_refuses_with_a_reason(uri: str, fragment: str) -> None:
    with pytest.raises(ModelURIError, match=None) as error:
        parse(uri)
    assert fragment in str(error.value)
    assert scheme_error(uri) == str(error.value)


def test_scheme_error_is_none_for_fetchable_uris() -> None:
    assert scheme_error("https://h/x.mar") is None


@pytest.mark.parametrize(
    ("uri", "prefix"),
    [
        ("s3://bkt/m.mar", False),
        ("s3://bkt/dir/", True),
        ("gs://bkt", True),
        ("https://h/d/", False),
    ],
)
def test_prefix_uris_name_folders(uri: str, prefix: bool) -> None:
    assert parse(uri).is_prefix is prefix


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("https://h/a/resnet50-1.0.mar?X-Amz-Signature=abc", "resnet50-1.0.mar"),
        ("pvc://claim/models/bert.mar", "bert.mar"),
        ("https://h/", "model.mar"),
        ("https://h/.hidden", "model.mar"),
        ("file:///m/x%20y.mar", "x y.mar"),
        ("s3://bkt/models/resnet/", "resnet"),
        ("gs://bkt/", "model"),
    ],
)
def test_archive_filename(uri: str, name: str) -> None:
    assert archive_filename(uri) == name


def test_redacted_drops_credentials_and_query() -> None:
    parsed = parse("https://user:secret@h.example:8443/m.mar?token=abc")
    assert parsed.redacted == "https://h.example:8443/m.mar"


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        self.seen.append((event, fields))

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]


def test_pvc_copy_is_verified_and_placed(tmp_path: Path) -> None:
    claim = tmp_path / "pvc" / "claim" / "dir"
    claim.mkdir(parents=True)
    data = b"archive" * 1000
    (claim / "m.mar").write_bytes(data)
    (claim / "m.mar").chmod(0o644)  # world-readable on the claim
    events = Events()
    settings = FetchSettings(pvc_root=tmp_path / "pvc")
    digest = hashlib.sha256(data).hexdigest()
    placed = fetch(
        "pvc://claim/dir/m.mar", tmp_path / "store", sha256=digest, settings=settings, report=events
    )
    assert placed == tmp_path / "store" / "m.mar"
    assert placed.read_bytes() == data
    assert stat.S_IMODE(placed.stat().st_mode) == 0o640  # the copy is not
    assert events.names() == ["start", "done"]
    assert events.seen[-1][1]["sha256"] == digest
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["m.mar"]


def test_checksum_mismatch_leaves_nothing_behind(tmp_path: Path) -> None:
    source = tmp_path / "m.mar"
    source.write_bytes(b"abc")
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(
            f"file://{source}",
            tmp_path / "store",
            sha256="0" * 64,
            settings=FetchSettings(),
            report=Events(),
        )
    assert list((tmp_path / "store").iterdir()) == []


def test_missing_local_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"does not exist.*mounted at"):
        fetch(
            "pvc://claim/none.mar",
            tmp_path / "store",
            sha256=None,
            settings=FetchSettings(pvc_root=tmp_path),
            report=Events(),
        )


def test_present_archive_is_not_fetched_again(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "m.mar").write_bytes(b"x")
    events = Events()
    digest = hashlib.sha256(b"x").hexdigest()
    fetch("file:///nowhere/m.mar", store, sha256=digest, settings=FetchSettings(), report=events)
    assert events.names() == ["present"]


def test_pvc_symlink_cannot_leave_the_claim(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"not a model")
    claim = tmp_path / "pvc" / "claim"
    claim.mkdir(parents=True)
    (claim / "m.mar").symlink_to(outside)
    with pytest.raises(FetchError, match="outside the claim's volume"):
        fetch(
            "pvc://claim/m.mar",
            tmp_path / "store",
            sha256=None,
            settings=FetchSettings(pvc_root=tmp_path / "pvc"),
            report=Events(),
        )
    assert not (tmp_path / "store" / "m.mar").exists()
