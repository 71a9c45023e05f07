"""Method + path routing for the HTTP core.

Patterns are written the way the APIs document them — `/predictions/{model}/{version}`,
`/v1/models/{model}:predict` — and compiled to one regular expression each. Routes are
grouped by their first literal path segment, so a request is matched against the two or
three patterns that can apply, not the whole table. A path that matches no pattern is 404; a
path that matches under another method is 405, as TorchServe answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from marfleet.runtime.server.http import ErrorRenderer, Handler, Request, Response

NOT_FOUND = "Requested resource is not found, please refer to API document."
METHOD_NOT_ALLOWED = "Requested method is not allowed, please refer to API document."
_PARAM = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class _Route:
    methods: frozenset[str]
    regex: re.Pattern[str]
    handler: Handler


class Router:
    def __init__(self, error_response: ErrorRenderer) -> None:
        self._groups: dict[str, list[_Route]] = {}
        self.documented: list[tuple[str, frozenset[str], str]] = []  # for the OpenAPI description
        self._error_response = error_response

    def add(
        self, methods: str | Iterable[str], pattern: str, handler: Handler, summary: str = ""
    ) -> None:
        names = frozenset([methods] if isinstance(methods, str) else methods)
        if _first_segment(pattern).startswith("{"):
            raise ValueError(f"route {pattern!r} must start with a literal path segment")
        escaped = re.escape(pattern).replace(r"\{", "{").replace(r"\}", "}")
        regex = re.compile("^" + _PARAM.sub(r"(?P<\1>[^/]+?)", escaped) + "/?$")
        self._groups.setdefault(_first_segment(pattern), []).append(_Route(names, regex, handler))
        self.documented.append((pattern, names, summary))

    async def __call__(self, request: Request) -> Response:
        allowed_elsewhere = False
        for route in self._groups.get(_first_segment(request.path), ()):
            match = route.regex.match(request.path)
            if match is None:
                continue
            if request.method not in route.methods:
                allowed_elsewhere = True
                continue
            request.params = match.groupdict()
            return await route.handler(request)
        if allowed_elsewhere:
            return self._error_response(405, METHOD_NOT_ALLOWED)
        return self._error_response(404, NOT_FOUND)


def _first_segment(path: str) -> str:
    return path.lstrip("/").split("/", 1)[0]
