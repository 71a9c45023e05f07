"""The router's pure parts: routing from an InferenceService, the routing table, the wire
form of forwarded requests and answers, and the command line."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from marfleet.runtime.router.cli import UsageError, settings_from
from marfleet.runtime.router.proxy import answer, serialise
from marfleet.runtime.router.source import routing_from_isvc
from marfleet.runtime.router.table import Mirror, NoRoute, Routing, RoutingTable
from marfleet.runtime.router.upstream import Reply, Timeouts, UpstreamPool
from marfleet.runtime.server.http import Request


def isvc(
    spec_weights: dict[str, int],
    status_weights: dict[str, int] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": "cart", "namespace": "shop"},
        "spec": {
            "variants": [
                {"name": name, "weight": weight, "model": {"uri": f"file:///{name}.mar"}}
                for name, weight in spec_weights.items()
            ],
            **spec,
        },
    }
    if status_weights is not None:
        obj["status"] = {
            "variants": [{"name": n, "weight": w, "replicas": 1} for n, w in status_weights.items()]
        }
    return obj


def test_the_router_follows_the_weights_the_operator_published() -> None:
    routing = routing_from_isvc(isvc({"stable": 0, "canary": 100}, {"stable": 75, "canary": 25}))
    assert routing == Routing(weights={"stable": 75, "canary": 25})


def test_before_the_operator_publishes_the_spec_weights_apply() -> None:
    routing = routing_from_isvc(isvc({"stable": 90, "canary": 10}))
    assert routing is not None and routing.weights == {"stable": 90, "canary": 10}


def test_with_a_rollout_the_router_waits_for_published_weights() -> None:
    rollout = {"steps": [10, 100], "stepSeconds": 60}
    assert routing_from_isvc(isvc({"stable": 0, "canary": 100}, rollout=rollout)) is None
    partial = isvc({"stable": 0, "canary": 100}, {"stable": 100}, rollout=rollout)
    assert routing_from_isvc(partial) is None


def test_a_single_variant_defaults_to_all_traffic() -> None:
    obj = isvc({})
    obj["spec"]["variants"] = [{"name": "only", "model": {"uri": "file:///a.mar"}}]
    routing = routing_from_isvc(obj)
    assert routing is not None and routing.weights == {"only": 100}


def test_sticky_header_and_mirror_come_from_spec_routing() -> None:
    routing = routing_from_isvc(
        isvc(
            {"stable": 100, "shadow": 0},
            routing={"stickyHeader": "X-User-Id", "mirror": {"variant": "shadow", "percent": 20}},
        )
    )
    assert routing == Routing(
        weights={"stable": 100, "shadow": 0},
        sticky_header="x-user-id",
        mirror=Mirror("shadow", 20),
    )


POOLS = {
    name: UpstreamPool(f"http://127.0.0.1:{port}", Timeouts())
    for name, port in (("stable", 9001), ("canary", 9002), ("shadow", 9003))
}


def test_the_table_spreads_unpinned_requests_by_weight() -> None:
    table = RoutingTable(Routing({"stable": 90, "canary": 10}), POOLS)
    counts = Counter(table.choose({}).variant for _ in range(1_000))
    assert counts == {"stable": 900, "canary": 100}


def test_the_sticky_header_pins_a_key_and_its_absence_falls_back_to_the_spread() -> None:
    table = RoutingTable(Routing({"stable": 50, "canary": 50}, sticky_header="x-user-id"), POOLS)
    pinned = {table.choose({"x-user-id": "alice"}).variant for _ in range(50)}
    assert len(pinned) == 1
    assert {table.choose({}).variant for _ in range(4)} == {"stable", "canary"}


def test_mirroring_copies_its_percent_and_never_to_the_variant_that_answered() -> None:
    table = RoutingTable(Routing({"stable": 100, "shadow": 0}, mirror=Mirror("shadow", 25)), POOLS)
    route = table.choose({})
    copies = [table.mirror_for(route) for _ in range(100)]
    assert sum(copy is not None and copy.variant == "shadow" for copy in copies) == 25
    shadow_route = RoutingTable(Routing({"shadow": 100}, mirror=Mirror("shadow", 100)), POOLS)
    assert shadow_route.mirror_for(shadow_route.choose({})) is None


def test_the_table_refuses_variants_without_upstreams_and_all_zero_weights() -> None:
    with pytest.raises(ValueError, match=r"\['ghost'\] that have no upstream"):
        RoutingTable(Routing({"stable": 50, "ghost": 50}), POOLS)
    with pytest.raises(ValueError, match="mirror variant 'ghost'"):
        RoutingTable(Routing({"stable": 100}, mirror=Mirror("ghost", 5)), POOLS)
    with pytest.raises(NoRoute, match="every variant has weight 0"):
        RoutingTable(Routing({"stable": 0, "canary": 0}), POOLS).choose({})


def request(**overrides: Any) -> Request:
    fields: dict[str, Any] = {
        "method": "POST",
        "path": "/predictions/cart model/2.0",
        "query_string": "a=1&b=%2F",
        "headers": {
            "host": "cart.shop",
            "content-type": "application/json",
            "connection": "keep-alive",
            "transfer-encoding": "chunked",
            "x-user-id": "alice",
            "x-forwarded-for": "10.0.0.9",
        },
        "body": b'{"x": 1}',
        "client": "10.1.2.3:5555",
        "received_at": 0.0,
    }
    fields.update(overrides)
    return Request(**fields)


def test_forwarded_requests_keep_end_to_end_headers_and_drop_hop_by_hop_ones() -> None:
    wire = serialise(request())
    head, body = wire.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /predictions/cart%20model/2.0?a=1&b=%2F HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers == {
        "host": "cart.shop",
        "content-type": "application/json",
        "x-user-id": "alice",
        "x-forwarded-for": "10.0.0.9, 10.1.2.3",
        "content-length": "8",
    }
    assert body == b'{"x": 1}'


def test_shadow_copies_say_so_and_bodiless_gets_have_no_length() -> None:
    wire = serialise(request(method="GET", body=b"", headers={}), shadow=True)
    assert wire.endswith(b"x-forwarded-for: 10.1.2.3\r\nx-marfleet-shadow: true\r\n\r\n")
    assert b"content-length" not in wire


def test_answers_keep_upstream_headers_and_name_the_variant() -> None:
    reply = Reply(
        200,
        [
            ("content-type", "application/json"),
            ("content-length", "2"),
            ("date", "yesterday"),
            ("connection", "keep-alive"),
            ("x-request-id", "r1"),
            ("vary", "a"),
            ("vary", "b"),
        ],
        b"{}",
    )
    content_type, headers = answer(reply, "canary")
    assert content_type == "application/json"
    assert headers == {"x-request-id": "r1", "vary": "a, b", "x-marfleet-variant": "canary"}


def test_static_flags_make_a_static_routing() -> None:
    settings = settings_from(
        [
            "--backend",
            "stable=http://127.0.0.1:1",
            "--backend",
            "canary=http://127.0.0.1:2",
            "--weights",
            "stable=90,canary=10",
            "--sticky-header",
            "X-User",
            "--mirror",
            "canary=5",
        ],
        {},
    )
    assert settings.static == Routing(
        {"stable": 90, "canary": 10}, sticky_header="x-user", mirror=Mirror("canary", 5)
    )
    assert settings.backends == {"stable": "http://127.0.0.1:1", "canary": "http://127.0.0.1:2"}


def test_in_a_pod_backends_and_namespace_come_from_the_environment() -> None:
    backends = [{"variant": "stable", "url": "http://cart-stable.shop.svc:8080"}]
    settings = settings_from(
        ["--isvc", "cart"],
        {"MARFLEET_ROUTER_BACKENDS": json.dumps(backends), "MARFLEET_NAMESPACE": "shop"},
    )
    assert (settings.isvc, settings.namespace, settings.static) == ("cart", "shop", None)
    assert settings.backends == {"stable": "http://cart-stable.shop.svc:8080"}


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--isvc", "cart"], {}, "no upstreams"),
        (["--backend", "a=http://x:1"], {}, "give --weights, or --isvc"),
        (["--backend", "a"], {}, "--backend takes NAME=VALUE"),
        (["--backend", "a=http://x:1", "--weights", "a=ten"], {}, "not a whole number"),
        (["--isvc", "c"], {"MARFLEET_ROUTER_BACKENDS": "{"}, "must be a JSON list"),
        (
            ["--isvc", "c", "--backend", "a=http://x:1", "--mirror", "a=5"],
            {},
            "go with --weights",
        ),
        (
            ["--backend", "a=http://x:1", "--weights", "a=100", "--upstream-ca", "/dev/null"],
            {},
            "no --backend is one",
        ),
        (
            ["--backend", "a=https://x:1", "--weights", "a=100", "--upstream-ca", "/nonexistent"],
            {},
            "not a readable PEM CA certificate",
        ),
    ],
)
def test_bad_flags_say_what_to_do(argv: list[str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        settings_from(argv, environ)


def test_a_refused_variant_falls_back_to_the_heaviest_other_live_one() -> None:
    table = RoutingTable(Routing({"stable": 80, "canary": 20, "shadow": 0}), POOLS)
    by_name = {route.variant: route for route in table.routes}
    assert table.fallback(by_name["canary"]) == by_name["stable"]
    assert table.fallback(by_name["stable"]) == by_name["canary"]
    alone = RoutingTable(Routing({"stable": 100, "canary": 0}), POOLS)
    assert alone.fallback(alone.routes[0]) is None
