"""The issue's whole story on a real node (e2e/scenario): chart, in-cluster operator, an
archive fetched over HTTP, predictions through the Service and the router, the HPA scaling a
variant 1 -> 3 -> 1 on Prometheus data, a pod deleted and a 90/10 roll under load with no failed
request, a gRPC prediction through the router, TorchServe's MNIST example (a grayscale image
handler) answering from the runtime image, which has no TorchServe, what TorchServe 0.12 answers
for the same archive and picture, and nothing left afterwards. The scenario judges each step
itself (ScenarioError); this test restates the numbers that make the claims."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from e2e.demo.console import Console
from e2e.scenario.story import MAX_REPLICAS, STEPS, Scenario, Settings, summary_json
from tests.realnode import SharedRealNode

pytestmark = pytest.mark.slow


def test_real_pods_serve_scale_survive_a_deleted_pod_and_roll_without_failures(
    real_node: SharedRealNode, tmp_path: Path
) -> None:
    settings = Settings(cluster=real_node.name, workdir=tmp_path)
    # on the real node the other real-node modules used (tests/realnode.py): `make real`
    # brings up its own; the images are imported (again) by the scenario's own step
    report = Scenario(settings, Console(sys.stdout, STEPS), real_node.with_images()).run()
    print(summary_json(report))
    assert report.facts["ready_replicas_under_load"] == MAX_REPLICAS
    for phase in ("scale_up", "delete_pod", "roll"):
        assert report.load[phase].requests > 0, phase
        assert report.load[phase].failed == 0, report.load[phase].describe()
    assert report.load["all"].failed == 0, report.load["all"].describe()
    assert 4 <= report.facts["canary_share"] <= 18
    assert report.facts["grpc_variant"] in {"stable", "canary"}  # gRPC through the router
    assert set(report.load["roll"].versions) == {"1.0", "2.0"}
    assert report.seconds["scale_down"] > 0
    grayscale = report.facts["grayscale"]
    assert not grayscale["torchserve_installed"]  # the runtime image: marfleet's own `ts`
    assert grayscale["marfleet"] == grayscale["torchserve"]
    assert grayscale["marfleet"].isdigit()  # one digit, as the example's postprocess answers
