"""s3:// and gs:// sources, through obstore (the Rust `object_store` crate's Python binding).

Why obstore rather than boto3 + google-cloud-storage or fsspec: one library for both stores
with no Python dependencies (botocore pins python-dateutil<3, which conflicts with
kubernetes>=37 in the same environment), streaming reads with a per-read timeout (the stall
timeout), and the standard credential chains of both clouds: AWS_* variables, IRSA web
identity, ECS and instance metadata; GOOGLE_APPLICATION_CREDENTIALS and the metadata server
(GKE Workload Identity). A shared-credentials file (AWS_SHARED_CREDENTIALS_FILE), which
object_store does not read, is read here. Retries are ours (fetch.py), so the store's are off.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .limits import Budget, FetchError, Retryable
from .sources import CHUNK, Entry, Stream
from .uri import ModelURI

if TYPE_CHECKING:
    from obstore.store import ClientConfig, GCSConfig, RetryConfig, S3Config

MAX_OBJECTS = 10_000
"""A prefix with more objects than this is refused (a model folder, not a data lake)."""


@dataclass(frozen=True)
class StoreOptions:
    """How to reach the bucket; empty values leave the choice to the library's environment."""

    endpoint: str = ""
    region: str = ""
    addressing: str = "auto"
    """S3 only: "path" (https://endpoint/bucket/key), "virtual" (https://bucket.endpoint/key),
    or "auto": path-style with a custom endpoint, virtual-hosted on AWS."""
    anonymous: bool = False


class ObjectSource:
    def __init__(
        self,
        uri: ModelURI,
        options: StoreOptions,
        connect_seconds: float,
        stall_seconds: float,
        budget: Budget,
    ) -> None:
        self.uri = uri
        self.where = f"{uri.scheme} bucket {uri.location!r}"
        from obstore.exceptions import BaseError

        try:
            self.store = _make_store(uri, options, connect_seconds, stall_seconds, budget)
        except (BaseError, ValueError) as error:
            reason = _QUOTED.sub('"..."', _reason(error))  # a parser may quote what it read
            raise FetchError(
                f"{self.where}: the store's settings or credentials cannot be used: {reason}"
            ) from None

    def entries(self, budget: Budget) -> list[Entry]:
        import obstore
        from obstore import exceptions

        key = self.uri.key
        if not self.uri.is_prefix:
            with self._errors(key):
                try:
                    meta = obstore.head(self.store, key)
                except (PermissionError, exceptions.PermissionDeniedError) as refused:
                    # An answer to HEAD has no body, so no reason: ask for one byte to hear it.
                    obstore.get(self.store, key, options={"range": (0, 1)})
                    raise refused from None
            return [Entry("", meta["size"], _version(meta))]
        found: list[Entry] = []
        with self._errors(key or "/"):
            for batch in obstore.list(self.store, key or None, chunk_size=1000):
                budget.check_time()
                for meta in batch:
                    name = meta["path"][len(key) :].lstrip("/")
                    if not name or name.endswith("/"):
                        continue  # folder markers some tools write
                    if any(part in ("", ".", "..") for part in name.split("/")):
                        raise FetchError(
                            f"{self.where}: object {meta['path']!r} cannot be placed as a file"
                        )
                    found.append(Entry(name, meta["size"], _version(meta)))
                    if len(found) > MAX_OBJECTS:
                        raise FetchError(
                            f"{self.where}: more than {MAX_OBJECTS} objects under {key!r}; "
                            "point model.uri at the model's own folder"
                        )
        if not found:
            raise FetchError(
                f"{self.where} has no objects under {key!r}: check model.uri (a prefix ends with /)"
            )
        return sorted(found, key=lambda entry: entry.name)

    @contextlib.contextmanager
    def open(self, entry: Entry, budget: Budget) -> Iterator[Stream]:
        import obstore

        key = f"{self.uri.key}{entry.name}" if entry.name else self.uri.key
        with self._errors(key):
            result = obstore.get(self.store, key)
        chunks = (bytes(chunk) for chunk in result.stream(min_chunk_size=CHUNK))
        yield Stream(_guarded(chunks, self, key), result.meta["size"])

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """The library's errors as ours: the bucket, the object, the reason; never a secret.
        (obstore raises the built-in FileNotFoundError/PermissionError for 404/403.) Only
        library calls run inside: a local file error is never blamed on the bucket."""
        from obstore import exceptions

        try:
            yield
        except (exceptions.NotFoundError, FileNotFoundError):
            raise FetchError(f"{self.where} has no object {key!r}: check model.uri") from None
        except (
            exceptions.PermissionDeniedError,
            exceptions.UnauthenticatedError,
            PermissionError,
        ) as error:
            raise FetchError(
                f"{self.where} refused access to {key!r}: {_reason(error)}; check the "
                "credentials model.storage gives (Secret or ServiceAccount) and the bucket policy"
            ) from None
        except exceptions.GenericError as error:
            reason = _reason(error)
            if _is_client_error(str(error)):
                raise FetchError(f"{self.where}, object {key!r}: {reason}") from None
            raise Retryable(f"{self.where}: {reason}") from None
        except exceptions.BaseError as error:
            raise FetchError(f"{self.where}, object {key!r}: {_reason(error)}") from None


def _guarded(chunks: Iterator[bytes], source: ObjectSource, key: str) -> Iterator[bytes]:
    with source._errors(key):
        yield from chunks


def _make_store(
    uri: ModelURI,
    options: StoreOptions,
    connect_seconds: float,
    stall_seconds: float,
    budget: Budget,
) -> Any:
    from obstore.store import GCSStore, S3Store

    client: ClientConfig = {
        # Where the endpoint (model.storage.endpoint, AWS_ENDPOINT_URL, a GCS key's
        # gcs_base_url) says http, it was configured so: an in-cluster store, a test.
        "allow_http": True,
        "connect_timeout": timedelta(seconds=connect_seconds),
        "read_timeout": timedelta(seconds=stall_seconds),
        "timeout": timedelta(seconds=max(budget.remaining(), 1.0)),
    }
    retry: RetryConfig = {"max_retries": 0, "retry_timeout": timedelta(seconds=1)}
    if uri.scheme == "s3":
        endpoint = (
            options.endpoint
            or os.environ.get("AWS_ENDPOINT_URL_S3", "")
            or (os.environ.get("AWS_ENDPOINT_URL", ""))
        )
        config: S3Config = {}
        if options.endpoint:
            config["endpoint"] = options.endpoint
        if options.region:
            config["region"] = options.region
        elif endpoint and not any(os.environ.get(v) for v in ("AWS_REGION", "AWS_DEFAULT_REGION")):
            config["region"] = "us-east-1"  # S3-compatible stores mostly ignore it
        virtual = options.addressing == "virtual" or (options.addressing == "auto" and not endpoint)
        config["virtual_hosted_style_request"] = virtual
        if options.anonymous:
            config["skip_signature"] = True
        provider = None if options.anonymous else _shared_credentials_file()
        return S3Store(
            uri.location,
            config=config,
            client_options=client,
            retry_config=retry,
            credential_provider=provider,
        )
    gcs: GCSConfig = {}
    if options.endpoint:
        gcs["base_url"] = options.endpoint
    if options.anonymous:
        gcs["skip_signature"] = True
    return GCSStore(uri.location, config=gcs, client_options=client, retry_config=retry)


def _shared_credentials_file() -> Any:
    """A credential provider for AWS_SHARED_CREDENTIALS_FILE (a mounted file), or None to let
    object_store's chain decide (environment, web identity, container, instance metadata)."""
    path = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "")
    if not path or os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    profile = os.environ.get("AWS_PROFILE", "default")
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as reader:
            parser.read_file(reader)
        section = parser[profile]
        credential = {
            "access_key_id": section["aws_access_key_id"],
            "secret_access_key": section["aws_secret_access_key"],
            "token": section.get("aws_session_token"),
            "expires_at": None,
        }
    except (OSError, configparser.Error, KeyError) as error:
        raise FetchError(
            f"AWS_SHARED_CREDENTIALS_FILE {path}: no usable [{profile}] profile with "
            f"aws_access_key_id and aws_secret_access_key ({type(error).__name__})"
        ) from None
    return lambda: credential


def _version(meta: Any) -> str:
    return str(meta.get("e_tag") or meta.get("version") or "")


_QUOTED = re.compile(r'"[^"]*"')
_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(r"<Message>([^<]{1,300})</Message>")
_STATUS = re.compile(r"\b(?:status(?: code)?:?\s*|HTTP status\s*)(\d{3})\b", re.I)


def _reason(error: Exception) -> str:
    """What the store said, reduced to its error code and message (S3 XML or the library's own
    words, first line only): no request details, headers or signatures."""
    text = str(error)
    code, message = _CODE.search(text), _MESSAGE.search(text)
    if code:
        return code.group(1) + (f" ({message.group(1)})" if message else "")
    status = _STATUS.search(text)
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return (f"HTTP {status.group(1)}: " if status else "") + first[:300]


def _is_client_error(text: str) -> bool:
    status = _STATUS.search(text)
    return (
        status is not None
        and status.group(1).startswith("4")
        and status.group(1)
        not in (
            "408",
            "429",
        )
    )
