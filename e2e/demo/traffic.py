"""Real predictions sent through the router, counted by the variant that answered each one.

The router names the variant on every answer (`x-marfleet-variant`), and each answer's body
carries the model version the handler ran, so the split the demo prints is read off the
answers themselves. The weights the router has in force come from its own metrics
(`marfleet_router_weight`), which is how the demo knows that a weight change has arrived.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from marfleet.runtime.router.proxy import VARIANT_HEADER
from prometheus_client.parser import text_string_to_metric_families

SAMPLE_INPUTS = (
    [5.1, 3.5, 1.4, 0.2],
    [6.7, 3.0, 5.2, 2.3],
    [5.9, 3.0, 4.2, 1.5],
)


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    failures: Counter[int] = field(default_factory=Counter)
    samples: dict[str, tuple[list[float], Any]] = field(default_factory=dict)
    """The first answer each variant gave: (input, decoded JSON body)."""


def predict(base_url: str, model: str, requests: int) -> Tally:
    """POST `requests` predictions one after another over one keep-alive connection."""
    tally = Tally()
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for index in range(requests):
            features = SAMPLE_INPUTS[index % len(SAMPLE_INPUTS)]
            reply = client.post(f"/predictions/{model}", json={"features": features})
            if reply.status_code != 200:
                tally.failures[reply.status_code] += 1
                continue
            variant = reply.headers.get(VARIANT_HEADER, "?")
            tally.counts[variant] += 1
            tally.samples.setdefault(variant, (features, reply.json()))
    return tally


def router_weights(metrics_url: str) -> dict[str, int]:
    """The weight the router applies to each variant, from its /metrics."""
    text = httpx.get(metrics_url, timeout=5).text
    return {
        sample.labels["variant"]: int(sample.value)
        for family in text_string_to_metric_families(text)
        if family.name == "marfleet_router_weight"
        for sample in family.samples
    }
