"""Model URIs: which schemes exist, which can be fetched, and where a fetched archive lands.

Pure and dependency-free on purpose: the operator's renderers import it to name the archive
the server loads and to refuse unsupported schemes in status, and `marfleet fetch` uses the
same functions, so the two can never disagree about a file name or a scheme.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

SUPPORTED_SCHEMES: tuple[str, ...] = ("http", "https", "file", "pvc", "s3", "gs")
"""Schemes `marfleet fetch` can read."""

OBJECT_STORE_SCHEMES: tuple[str, ...] = ("s3", "gs")
"""Schemes whose location is a bucket and whose path may be a prefix (a folder of objects)."""

DEFAULT_ARCHIVE_NAME = "model.mar"
DEFAULT_FOLDER_NAME = "model"


BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]")
"""S3 and GCS bucket names: lower case, digits, dots, dashes, underscores (GCS)."""


class ModelURIError(ValueError):
    """The URI cannot be fetched; the message says what is wrong and what to do instead."""


@dataclass(frozen=True)
class ModelURI:
    """A parsed model URI. For pvc:// URIs `location` is the claim name."""

    raw: str
    scheme: str
    location: str
    path: str

    @property
    def is_prefix(self) -> bool:
        """An object-store URI naming a folder of objects (s3://bucket/dir/), not one object."""
        return self.scheme in OBJECT_STORE_SCHEMES and (self.path.endswith("/") or not self.key)

    @property
    def key(self) -> str:
        """The object key (or key prefix) inside the bucket, for object-store URIs."""
        return self.path.lstrip("/")

    @property
    def redacted(self) -> str:
        return redact(self.raw)


def redact(uri: str) -> str:
    """The URI without user info or query string, safe to log (presigned URLs carry keys)."""
    parts = urlsplit(uri.strip())
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def parse(uri: str) -> ModelURI:
    """Parse and check a model URI; raise ModelURIError for a scheme that cannot be fetched."""
    parts = urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    if not scheme or "://" not in uri:
        raise ModelURIError(
            f"model URI {uri!r} has no scheme: write it as https://host/model.mar, "
            "pvc://<claim>/<path> or file:///<path>"
        )
    if scheme not in SUPPORTED_SCHEMES:
        raise ModelURIError(
            f"model URI scheme {scheme!r} is not supported yet (supported: "
            f"{', '.join(SUPPORTED_SCHEMES)}); serve the archive over HTTP(S), from S3 or GCS, "
            "or put it on a PersistentVolumeClaim and use pvc://<claim>/<path>"
        )
    path = unquote(parts.path)
    if scheme in ("http", "https") and not parts.hostname:
        raise ModelURIError(f"model URI {uri!r} has no host")
    if scheme == "file" and (parts.netloc or not path.startswith("/")):
        raise ModelURIError(f"model URI {uri!r}: file URIs are absolute, e.g. file:///models/x.mar")
    if scheme == "pvc":
        if not parts.netloc or parts.netloc in (".", ".."):
            raise ModelURIError(f"model URI {uri!r}: expected pvc://<claim>/<path>")
        if ".." in path.split("/") or posixpath.normpath(path or "/") in ("/", "."):
            raise ModelURIError(
                f"model URI {uri!r}: the path inside the claim must name a file and may not "
                "contain '..'"
            )
    if scheme in OBJECT_STORE_SCHEMES:
        shown = redact(uri)
        if parts.query or "@" in parts.netloc:
            raise ModelURIError(
                f"model URI {shown!r}: {scheme} URIs carry no query or credentials; give "
                "credentials through model.storage (a Secret or a ServiceAccount)"
            )
        if not BUCKET.fullmatch(parts.netloc):
            raise ModelURIError(
                f"model URI {shown!r}: {parts.netloc!r} is not a bucket name (lower case, "
                f"digits, '.', '-', '_'); expected {scheme}://<bucket>/<key> (a key ending in / "
                "names a folder of objects)"
            )
        if any(segment in (".", "..") for segment in path.lstrip("/").split("/")[:-1]):
            raise ModelURIError(f"model URI {shown!r}: the key may not contain '.' or '..' folders")
    return ModelURI(raw=uri, scheme=scheme, location=parts.netloc, path=path)


def archive_filename(uri: str) -> str:
    """The name a fetched archive gets in the model store: the URI path's last segment (for a
    prefix, s3://bucket/models/resnet/, the folder's name: resnet)."""
    parts = urlsplit(uri.strip())
    name = posixpath.basename(unquote(parts.path).rstrip("/"))
    if not name or name in (".", "..") or name.startswith("."):
        return DEFAULT_FOLDER_NAME if parts.scheme in OBJECT_STORE_SCHEMES else DEFAULT_ARCHIVE_NAME
    return name


def scheme_error(uri: str) -> str | None:
    """The reason `uri` cannot be fetched, or None when it can (for status conditions)."""
    try:
        parse(uri)
    except ModelURIError as error:
        return str(error)
    return None
