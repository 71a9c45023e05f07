"""Token authorization as TorchServe 0.12 does it: three keys, expiry, rotation, the key file.

At start the server writes `key_file.json` in TorchServe's layout (`management` and `inference`
keys with their `expiration time`, and the `API` key, which never expires) with mode 0600. Then
every request carries `Authorization: Bearer <key>` — the `B` capital, one space, the key, as
TorchServe compares it:

- the inference port wants the inference key on every path (`/predictions`, `/explanations`,
  `/ping`, `/v1`, `/v2`, and unknown paths too, which answer 400 before 404);
- the management port wants the management key, except `/token`, which wants the API key;
- `GET /api-description` and `OPTIONS /` are open on both ports (TorchServe answers them before
  its token check).

`GET /token?type=management|inference` (with the API key) replaces that key with a new one,
valid `token_expiration_min` minutes from now, and rewrites the key file; the old key stops
working at once. A missing, wrong, expired or lower-case-`bearer` token is TorchServe's
400 InvalidKeyException. `Tokens.check` is the one check: `DataPlane.authorize` calls it for
every transport, and the HTTP guard here picks which key a path needs.
`disable_token_authorization=true` turns all of it off, and marfleet's own
`disable_inference_token_authorization=true` (`guard_inference=False`) leaves only the
management keys (what the operator renders: kubelet probes and the router cannot carry a key
that rotates).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from marfleet.runtime.server.errors import ApiError
from marfleet.runtime.server.http import Handler, Request, Response

INVALID_TOKEN = (
    "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
)
# TorchServe's token API words its refusal differently; clients may match either text.
INVALID_TOKEN_API = (
    "Token Authentication failed. Token either incorrect, expired, or not provided correctly"
)
BEARER = "Bearer "
PUBLIC = frozenset({("GET", "/api-description"), ("OPTIONS", "/")})
Kind = Literal["management", "inference", "token"]
ROTATABLE = ("management", "inference")


@dataclass(frozen=True)
class Key:
    value: str
    expires_at: float | None  # time.time(); None: never (the API key)

    def accepts(self, token: str, now: float) -> bool:
        fresh = self.expires_at is None or now < self.expires_at
        return hmac.compare_digest(token.encode(), self.value.encode()) and fresh


class Tokens:
    """The keys in force and the key file that publishes them."""

    def __init__(
        self,
        key_file: Path,
        *,
        lifetime_s: float,
        guard_inference: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key_file = key_file
        self._guard_inference = guard_inference
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._keys = {kind: self._new(expires=True) for kind in ROTATABLE}
        self._keys["token"] = self._new(expires=False)
        self._write()

    def key(self, kind: Kind) -> str:
        return self._keys[kind].value

    def check(self, kind: Kind, authorization: str | None) -> None:
        """Raise TorchServe's 400 InvalidKeyException unless the header carries `kind`'s key."""
        if kind == "inference" and not self._guard_inference:
            return
        header = authorization or ""
        token = header[len(BEARER) :] if header.startswith(BEARER) else None
        if token is None or not self._keys[kind].accepts(token, self._clock()):
            message = INVALID_TOKEN_API if kind == "token" else INVALID_TOKEN
            raise ApiError(400, message, type="InvalidKeyException")

    def rotate(self, kind: str | None) -> None:
        """Replace the management or inference key (TorchServe's `/token?type=`)."""
        if kind not in ROTATABLE:
            raise ApiError(400, INVALID_TOKEN_API, type="InvalidKeyException")
        self._keys[kind] = self._new(expires=True)
        self._write()

    def _new(self, *, expires: bool) -> Key:
        return Key(secrets.token_urlsafe(16), self._clock() + self._lifetime_s if expires else None)

    def _write(self) -> None:
        document: dict[str, dict[str, str]] = {}
        for kind, name in (
            ("management", "management"),
            ("inference", "inference"),
            ("token", "API"),
        ):
            key = self._keys[kind]
            document[name] = {"key": key.value}
            if key.expires_at is not None:
                document[name]["expiration time"] = _instant(key.expires_at)
        # 0600 even when the file is already there (O_CREAT's mode applies only to a new
        # file), and never through a symlink someone put in its place.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(self._key_file, flags, 0o600)
        with os.fdopen(fd, "w") as handle:
            os.fchmod(fd, 0o600)
            json.dump(document, handle, indent=2)


def _instant(seconds: float) -> str:
    """Java's Instant.toString(): ISO 8601 in UTC with a `Z`."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def require_token(
    authorize: Callable[[Kind, str | None], None],
    api: Literal["management", "inference"],
    app: Handler,
) -> Handler:
    """Wrap one port's `app` with TorchServe's token rules for that port; `authorize(kind,
    <Authorization header>)` raises `ApiError` (`DataPlane.authorize`)."""

    async def guarded(request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if (request.method, path) not in PUBLIC:
            kind: Kind = "token" if api == "management" and path == "/token" else api
            try:
                authorize(kind, request.headers.get("authorization"))
            except ApiError as error:
                return error.response()
        return await app(request)

    return guarded


def token_api(tokens: Tokens) -> Handler:
    """`/token?type=management|inference`: a new key of that type (the guard checked the API
    key); TorchServe answers 200 with an empty JSON body and the new key in the key file."""

    async def rotate(request: Request) -> Response:
        tokens.rotate(request.query.get("type"))
        return Response(200, b"\n", "application/json")

    return rotate
