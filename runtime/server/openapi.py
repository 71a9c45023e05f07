"""The OpenAPI descriptions TorchServe serves: the whole API at `OPTIONS /` and
`/api-description`, and one model's part of it at `OPTIONS` on any of that model's paths
(`/predictions/m`, `/models/m/1.0`, ...).

They are generated from the router's table, so they can never list a route that does not exist
or miss one that does.
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


MODEL_PARAMETER = "{model_name}"


def describe(router: Router, *, title: str, version: str) -> dict[str, Any]:
    return _description(router.documented, title=title, version=version)


def describe_model(router: Router, model: str, *, title: str, version: str) -> dict[str, Any]:
    """The routes of one model (those with `{model_name}`, the name written in)."""
    routes = [
        (pattern.replace(MODEL_PARAMETER, model), methods, summary)
        for pattern, methods, summary in router.documented
        if MODEL_PARAMETER in pattern
    ]
    return _description(routes, title=title, version=version)


def _description(
    routes: list[tuple[str, frozenset[str], str]], *, title: str, version: str
) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for pattern, methods, summary in routes:
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
