"""Form bodies as TorchServe hands them to handlers: one row key per field.

TorchServe's frontend decodes `multipart/form-data` and `application/x-www-form-urlencoded`
requests into named fields; marfleet does it in the worker process instead, so the frontend's
single event loop never spends time on bodies.
"""

from __future__ import annotations

from urllib.parse import parse_qsl


def parse_form(content_type: str, body: bytes) -> dict[str, bytes] | None:
    """The fields of a form body, or None when the body is not a form."""
    media_type, _, params = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        return {key: value.encode("latin-1") for key, value in pairs}
    if media_type == "multipart/form-data":
        boundary = _parameter(params, "boundary")
        return _parse_multipart(body, boundary.encode("latin-1")) if boundary else None
    return None


def _parameter(params: str, name: str) -> str | None:
    for item in params.split(";"):
        key, _, value = item.strip().partition("=")
        if key.lower() == name:
            return value.strip().strip('"')
    return None


def _parse_multipart(body: bytes, boundary: bytes) -> dict[str, bytes]:
    fields: dict[str, bytes] = {}
    delimiter = b"--" + boundary
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, separator, content = part.partition(b"\r\n\r\n")
        if not separator:
            continue
        name = _field_name(head.decode("latin-1"))
        if name is not None:
            fields[name] = content[:-2] if content.endswith(b"\r\n") else content
    return fields


def _field_name(head: str) -> str | None:
    for line in head.split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            return _parameter(value.partition(";")[2], "name")
    return None
