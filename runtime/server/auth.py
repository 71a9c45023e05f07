"""Token authorization compatible with TorchServe 0.12's key file and `Authorization: Bearer`.

At start the server writes `key_file.json` (TorchServe's layout: management, inference and API
keys) where the operator or user can read it, and the management API then requires
`Authorization: Bearer <management key>`, compared in constant time by `DataPlane.authorize`
(the one check every transport calls). A missing or wrong token is
TorchServe's 400 InvalidKeyException. Inference stays open (Kubernetes probes and in-cluster
clients call it); `disable_token_authorization=true` turns the check off.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from marfleet.runtime.server.errors import ApiError
from marfleet.runtime.server.http import Handler, Request, Response

INVALID_TOKEN = (
    "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
)


@dataclass(frozen=True)
class Keys:
    management: str
    inference: str
    api: str

    @classmethod
    def generate(cls) -> Keys:
        return cls(*(secrets.token_urlsafe(16) for _ in range(3)))

    def write(self, path: Path) -> None:
        document = {
            "management": {"key": self.management},
            "inference": {"key": self.inference},
            "API": {"key": self.api},
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2)


def require_token(authorize: Callable[[str | None], None], app: Handler) -> Handler:
    """Wrap `app` so that `authorize(<Authorization header>)` must pass first (it raises
    `ApiError`, e.g. `DataPlane.authorize` bound to an API)."""

    async def guarded(request: Request) -> Response:
        try:
            authorize(request.headers.get("authorization"))
        except ApiError as error:
            return error.response()
        return await app(request)

    return guarded
