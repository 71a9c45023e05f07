"""The benchmark's models served by KServe, Ray Serve and LitServe, each the way its docs show.

Run inside the peer virtualenv (`e2e.bench.peer_venv`), one process per peer, serving all three
of the benchmark's models (the MLP with batching at 8 / 5 ms, ResNet-18 at batch 1, ResNet-18
at batch 8 / 50 ms) from the very TorchScript files packed into marfleet's and TorchServe's
`.mar`s, with the same preprocessing as TorchServe's `image_classifier` (resize 256, centre
crop 224, ImageNet normalisation, top-5 softmax); torch's threads per model process come from
OMP_NUM_THREADS, which the harness sets (to 1) as it does for the other servers:

- kserve: a `kserve.Model` subclass per model, `kserve.ModelServer(...).start([...])` (its
  hard-coded host 0.0.0.0 replaced by loopback, nothing else changed), the v1
  protocol (`POST /v1/models/NAME:predict`, `{"instances": [...]}`); the JPEG travels as
  `{"instances": [{"image": {"b64": ...}}]}` as in KServe's image examples. The PyPI server has
  no batching of its own (KServe batches in its agent sidecar), so none here.
- ray: a `@serve.deployment` class per model (1 replica, `max_ongoing_requests=64` so that a
  batch can fill) whose `__call__` takes the Starlette request and hands the input to a
  `@serve.batch` method; one application per model at `/NAME`; the raw body (JSON or JPEG) as
  for marfleet.
- litserve: a `ls.LitAPI` per model (`max_batch_size`, `batch_timeout`, its own `api_path`),
  one `ls.LitServer` for the three on CPU, 1 worker per device; JSON `{"input": ...}` and the
  JPEG as base64 in `{"image": ...}`, as LitServe's examples do.

    .venv-peers/bin/python -m e2e.bench.peer_apps --server kserve --port 8085 \
        --mlp mlp.pt --resnet resnet18.pt
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# name -> (max batch size, max delay in seconds): the harness's registrations
MODELS = {"mlp": (8, 0.005), "resnet_b1": (1, 0.005), "resnet_b8": (8, 0.05)}


@dataclass(frozen=True)
class Weights:
    mlp: Path
    resnet: Path

    def path(self, model: str) -> Path:
        return self.mlp if model == "mlp" else self.resnet


class Predictor:
    """One model: TorchScript forward plus TorchServe image_classifier's pre/post-processing."""

    def __init__(self, model: str, weights: Weights) -> None:
        self.image = model != "mlp"
        self.module = torch.jit.load(str(weights.path(model)), map_location="cpu").eval()
        if self.image:
            from torchvision import transforms

            self.transform = transforms.Compose(
                [
                    transforms.Resize(256),
                    transforms.CenterCrop(224),
                    transforms.ToTensor(),
                    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
                ]
            )

    def tensor(self, item: Any) -> torch.Tensor:
        """One request's input (a row of numbers, or JPEG bytes) as a model input row."""
        if not self.image:
            return torch.as_tensor(item, dtype=torch.float32)
        from PIL import Image

        return self.transform(Image.open(io.BytesIO(item)).convert("RGB"))

    def predict(self, items: list[Any]) -> list[Any]:
        batch = torch.stack([self.tensor(item) for item in items])
        with torch.inference_mode():
            output = self.module(batch)
        if not self.image:
            return list(output.tolist())
        probabilities, classes = torch.softmax(output, dim=1).topk(5, dim=1)
        return [
            {str(c): p for c, p in zip(cls, prob, strict=True)}
            for cls, prob in zip(classes.tolist(), probabilities.tolist(), strict=True)
        ]


def serve_kserve(port: int, weights: Weights) -> None:
    import kserve
    import uvicorn
    from kserve.protocol.rest import server as rest

    class LoopbackConfig(uvicorn.Config):
        """KServe 0.21 hard-codes host 0.0.0.0; the benchmark's servers bind loopback only."""

        def __init__(self, app: Any, **options: Any) -> None:
            super().__init__(app, **{**options, "host": "127.0.0.1"})

    rest.uvicorn.Config = LoopbackConfig

    class Served(kserve.Model):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.predictor = Predictor(name, weights)
            self.ready = True

        def predict(self, payload: dict[str, Any], headers: Any = None) -> dict[str, Any]:
            items = payload["instances"]
            if self.predictor.image:
                items = [base64.b64decode(item["image"]["b64"]) for item in items]
            return {"predictions": self.predictor.predict(items)}

    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1)
    server.start([Served(name) for name in MODELS])


def serve_ray(port: int, weights: Weights) -> None:
    import ray
    from ray import serve

    # logical CPUs for scheduling only: three 1-CPU replicas must fit beside the proxy
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for name, (max_batch, delay) in MODELS.items():

        class Served:
            def __init__(self, model: str) -> None:
                self.predictor = Predictor(model, weights)

            @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=delay)
            async def batched(self, items: list[Any]) -> list[Any]:
                return self.predictor.predict(items)

            async def __call__(self, request: Any) -> Any:
                body = await request.body()
                item = body if self.predictor.image else await request.json()
                return await self.batched(item)

        # Ray's default max_ongoing_requests (5) is below the batch size, so a batch of 8 could
        # never fill (Ray logs a warning saying so); its batching guide asks for at least the
        # batch size. 64, the benchmark's highest concurrency, queues like the other servers do.
        deployment = serve.deployment(
            num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1}
        )(Served)
        serve.run(deployment.bind(name), name=name, route_prefix=f"/{name}")
    print("ray serve ready", flush=True)
    while True:
        time.sleep(3600)


def serve_litserve(port: int, weights: Weights) -> None:
    # LitServe pickles its LitAPIs into spawned worker processes: the class lives in a module
    import litserve as ls

    from e2e.bench.peer_litserve import BenchAPI

    apis = [BenchAPI(name, *MODELS[name], weights) for name in MODELS]
    server = ls.LitServer(apis, accelerator="cpu")
    server.run(port=port, host="127.0.0.1", generate_client_file=False)


SERVERS = {"kserve": serve_kserve, "ray": serve_ray, "litserve": serve_litserve}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="peer_apps", description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=sorted(SERVERS), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mlp", type=Path, required=True, help="the MLP's TorchScript file")
    parser.add_argument("--resnet", type=Path, required=True, help="ResNet-18 TorchScript")
    args = parser.parse_args(argv)
    SERVERS[args.server](args.port, Weights(args.mlp, args.resnet))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
