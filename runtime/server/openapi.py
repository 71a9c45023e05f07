"""The OpenAPI description served at `OPTIONS /` and `/api-description`, as TorchServe does.

It is generated from the router's table, so it can never list a route that does not exist or
miss one that does.
"""

from __future__ import annotations

import re
from typing import Any

from marfleet.runtime.server.routing import Router

_PARAM = re.compile(r"\{(\w+)\}")
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "type", "message"],
    "properties": {
        "code": {"type": "integer"},
        "type": {"type": "string"},
        "message": {"type": "string"},
    },
}


def describe(router: Router, *, title: str, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for pattern, methods, summary in router.documented:
        parameters = [
            {"in": "path", "name": name, "required": True, "schema": {"type": "string"}}
            for name in _PARAM.findall(pattern)
        ]
        for method in sorted(methods):
            paths.setdefault(pattern, {})[method.lower()] = {
                "description": summary,
                "parameters": parameters,
                "responses": {
                    "200": {"description": "OK"},
                    "default": {
                        "description": "Error",
                        "content": {"application/json": {"schema": _ERROR_SCHEMA}},
                    },
                },
            }
    return {
        "openapi": "3.0.1",
        "info": {"title": title, "description": "marfleet model server", "version": version},
        "paths": paths,
    }
