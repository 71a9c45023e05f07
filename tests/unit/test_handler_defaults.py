"""The built-in handlers on tiny random-weight models, through ModelService as a worker uses it."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from marfleet.runtime.handlers.defaults.insights import integrated_gradients
from marfleet.runtime.handlers.defaults.text_handler import normalise_text, with_ngrams
from marfleet.runtime.handlers.defaults.vision_handler import (
    ImagenetTransform,
    imagenet_transform,
    map_on_threads,
)
from marfleet.runtime.handlers.errors import ModelLoadError
from marfleet.runtime.handlers.metrics import HandlerMetric
from marfleet.runtime.handlers.service import InferenceRequest, ModelService
from PIL import Image
from torchvision.transforms.functional import to_tensor

from tests.models import (
    TinyDetector,
    TinyDigitClassifier,
    TinyImageClassifier,
    TinyMLP,
    TinySegmenter,
    TinyTextClassifier,
    build,
    image_bytes,
    write_eager,
    write_index_to_name,
    write_model_dir,
    write_torchscript,
    write_vocab,
)

torch.set_num_threads(1)


def post(body: bytes, content_type: str) -> InferenceRequest:
    return InferenceRequest("r", body, content_type, {}, {})


def as_json(value: Any) -> InferenceRequest:
    return post(json.dumps(value).encode(), "application/json")


def payloads(service: ModelService, batch: list[InferenceRequest], **kwargs: Any) -> list[Any]:
    results = service.handle(batch, **kwargs)
    assert [r.status for r in results] == [200] * len(batch), [r.body for r in results]
    return [json.loads(r.body) for r in results]


def eager_model_dir(
    root: Path, handler: str, model_class: type[torch.nn.Module], labels: int = 0
) -> Path:
    model_file, weights = write_eager(root, model_class)
    if labels:
        write_index_to_name(root, labels)
    return write_model_dir(
        root, handler, model={"modelFile": model_file.name, "serializedFile": weights.name}
    )


def load(model_dir: Path, **kwargs: Any) -> ModelService:
    return ModelService.load(model_dir, gpu_id=None, batch_size=4, **kwargs)


def test_base_handler_runs_a_torchscript_model(tmp_path: Path) -> None:
    write_torchscript(tmp_path)
    service = load(write_model_dir(tmp_path, "base_handler", model={"serializedFile": "model.pt"}))
    rows = [[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, -1.0, 2.0]]
    (output,) = payloads(service, [as_json(rows)])
    torch.testing.assert_close(torch.tensor(output), build(TinyMLP)(torch.tensor(rows)))


def test_base_handler_runs_an_eager_model_from_its_model_file(tmp_path: Path) -> None:
    service = load(eager_model_dir(tmp_path, "base_handler", TinyMLP))
    rows = [[1.0, 2.0, 3.0, 4.0]]
    (output,) = payloads(service, [as_json(rows)])
    torch.testing.assert_close(torch.tensor(output), build(TinyMLP)(torch.tensor(rows)))


def test_base_handler_without_weights_says_what_it_needs(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path, "base_handler", model={"serializedFile": "model.onnx"})
    with pytest.raises(ModelLoadError, match=r"no model weights could be loaded.*TorchScript \.pt"):
        load(model_dir)


def expected_top5(image: Image.Image) -> dict[str, float]:
    with torch.no_grad():
        scores = build(TinyImageClassifier)(imagenet_transform()(image).unsqueeze(0))
    top = torch.topk(torch.softmax(scores, 1), 5)
    return {
        f"class_{i}": p
        for i, p in zip(top.indices[0].tolist(), top.values[0].tolist(), strict=True)
    }


@pytest.fixture
def classifier(tmp_path: Path) -> ModelService:
    return load(eager_model_dir(tmp_path, "image_classifier", TinyImageClassifier, labels=10))


def test_image_classifier_answers_top5_labels_for_png_jpeg_and_base64(
    classifier: ModelService,
) -> None:
    png, jpeg = image_bytes("PNG", seed=1), image_bytes("JPEG", seed=2)
    batch = [
        post(png, "image/png"),
        post(jpeg, "image/jpeg"),
        post(base64.b64encode(png), "text/plain"),
    ]
    outputs = payloads(classifier, batch)
    assert outputs[0] == pytest.approx(expected_top5(Image.open(io.BytesIO(png))))
    assert outputs[1] == pytest.approx(expected_top5(Image.open(io.BytesIO(jpeg))))
    assert outputs[2] == outputs[0]
    assert list(outputs[0]) == sorted(outputs[0], key=outputs[0].__getitem__, reverse=True)


def test_image_classifier_takes_nested_lists(classifier: ModelService) -> None:
    tensor = imagenet_transform()(Image.open(io.BytesIO(image_bytes(seed=3))))
    (from_list,) = payloads(classifier, [as_json(tensor.tolist())])
    (from_png,) = payloads(classifier, [post(image_bytes(seed=3), "image/png")])
    assert from_list == pytest.approx(from_png)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_image_classifier_fails_on_other_image_modes_as_torchserve_does(
    classifier: ModelService, mode: str
) -> None:
    """The stock 3-channel transform gets the image as stored (no RGB conversion): TorchServe's
    handler fails on these too, and a 1-channel handler (MNIST) needs its grayscale image."""
    (result,) = classifier.handle([post(image_bytes(mode=mode), "image/png")])
    assert result.status == 500


def test_a_one_channel_transform_gets_the_grayscale_image(tmp_path: Path) -> None:
    model_dir = eager_model_dir(tmp_path, "digits", TinyDigitClassifier)
    (model_dir / "digits.py").write_text(
        "from torchvision import transforms\n"
        "from marfleet.runtime.handlers.defaults.image_classifier import ImageClassifier\n\n\n"
        "class Digits(ImageClassifier):\n"
        "    image_processing = transforms.ToTensor()\n\n"
        "    def postprocess(self, data):\n"
        "        return data.tolist()\n"
    )
    gray = image_bytes(size=(28, 28), seed=6, mode="L")
    (scores,) = payloads(load(model_dir), [post(gray, "image/png")])
    pixels = to_tensor(Image.open(io.BytesIO(gray)))
    assert pixels.shape == (1, 28, 28)
    assert scores == pytest.approx(build(TinyDigitClassifier)(pixels[None])[0].tolist(), abs=1e-5)


@pytest.mark.parametrize(
    ("mode", "size"),
    [("RGB", (320, 240)), ("RGB", (100, 80)), ("L", (240, 500)), ("RGBA", (64, 48))],
)
def test_the_batched_imagenet_road_gives_torchvisions_tensor_bit_for_bit(
    mode: str, size: tuple[int, int]
) -> None:
    image = Image.open(io.BytesIO(image_bytes("JPEG", size=size, seed=7))).convert(mode)
    image = image.convert("RGB")
    fast = ImagenetTransform()
    batch = torch.from_numpy(fast.geometry(image)).unsqueeze(0)
    reference = imagenet_transform()(image)
    assert torch.equal(fast.normalise(batch)[0], reference)
    assert torch.equal(fast(image), reference)  # still usable as a plain transform


def test_a_single_image_batch_reaches_the_model_contiguous_on_the_cpu() -> None:
    """Channels-last strides (what the permute leaves) made a lone CPU image cost 1.5x."""
    fast = ImagenetTransform()
    one = fast.normalise(torch.zeros((1, 224, 224, 3), dtype=torch.uint8))
    assert one.is_contiguous()
    eight = fast.normalise(torch.zeros((8, 224, 224, 3), dtype=torch.uint8))
    assert torch.equal(eight[:1], one)


def test_a_batch_decoded_on_threads_answers_as_one_thread_does(
    classifier: ModelService,
) -> None:
    jpegs = [image_bytes("JPEG", size=(96 + 8 * i, 72), seed=i) for i in range(6)]
    batch = [post(jpeg, "image/jpeg") for jpeg in jpegs]
    torch.set_num_threads(3)
    try:
        threaded = payloads(classifier, batch)
        bad = [*batch[:4], post(b"not an image", "image/jpeg"), batch[5]]
        failed = classifier.handle(bad)
    finally:
        torch.set_num_threads(1)
    assert threaded == payloads(classifier, batch)
    for output, jpeg in zip(threaded, jpegs, strict=True):
        assert output == pytest.approx(expected_top5(Image.open(io.BytesIO(jpeg))))
    assert {r.status for r in failed} == {400}
    assert json.loads(failed[0].body)["message"].startswith("request 4:")


def test_map_on_threads_keeps_order_and_raises_the_first_failure() -> None:
    assert map_on_threads(lambda x: x * x, list(range(20)), 4) == [x * x for x in range(20)]

    def fail_on_odd(x: int) -> int:
        if x % 2:
            raise ValueError(f"item {x}")
        return x

    with pytest.raises(ValueError, match="item 1"):
        map_on_threads(fail_on_odd, list(range(10)), 4)


def test_an_unreadable_image_fails_the_batch_with_400(classifier: ModelService) -> None:
    (result,) = classifier.handle([post(b"certainly not an image", "image/png")])
    assert result.status == 400
    assert "not an image format PIL can read" in json.loads(result.body)["message"]


def test_image_classifier_explains_with_integrated_gradients(classifier: ModelService) -> None:
    (attribution,) = payloads(classifier, [post(image_bytes(), "image/png")], explain=True)
    assert torch.tensor(attribution).shape == (3, 224, 224)


@pytest.mark.parametrize("target", [3, [1, 7]])
def test_integrated_gradients_match_captum(target: int | list[int]) -> None:
    from captum.attr import IntegratedGradients

    model = build(TinyImageClassifier)
    inputs = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = IntegratedGradients(model).attribute(inputs, target=target, n_steps=15)
    assert torch.allclose(integrated_gradients(model, inputs, target, 15), expected, atol=1e-6)


def test_images_over_the_pixel_limit_are_refused(tmp_path: Path) -> None:
    model_dir = eager_model_dir(tmp_path, "image_classifier", TinyImageClassifier)
    default = Image.MAX_IMAGE_PIXELS
    try:
        service = load(model_dir, limit_max_image_pixels=1000)
        (result,) = service.handle([post(image_bytes(size=(64, 48)), "image/png")])
    finally:
        Image.MAX_IMAGE_PIXELS = default
    assert result.status == 400
    assert "more pixels than limit_max_image_pixels" in json.loads(result.body)["message"]


def test_describe_requests_get_describe_handle(tmp_path: Path) -> None:
    write_torchscript(tmp_path)
    service = load(write_model_dir(tmp_path, "base_handler", model={"serializedFile": "model.pt"}))
    describe = InferenceRequest("r", b"", "", {"describe": "True"}, {})
    (result,) = service.handle([describe])
    assert (result.status, result.body) == (200, b"null")


def test_profiling_in_the_model_config_times_each_stage(tmp_path: Path) -> None:
    model_dir = eager_model_dir(tmp_path, "image_classifier", TinyImageClassifier, labels=10)
    (model_dir / "model-config.yaml").write_text("handler:\n  profile: true\n")
    manifest = json.loads((model_dir / "MAR-INF/MANIFEST.json").read_text())
    manifest["model"]["configFile"] = "model-config.yaml"
    (model_dir / "MAR-INF/MANIFEST.json").write_text(json.dumps(manifest))
    sink: list[HandlerMetric] = []
    service = load(model_dir, metrics_sink=sink.extend)
    payloads(service, [post(image_bytes(), "image/png")])
    assert [m.name for m in sink] == [
        "ts_handler_preprocess",
        "ts_handler_inference",
        "ts_handler_postprocess",
        "HandlerTime",
        "PredictionTime",
    ]


def test_image_segmenter_answers_class_and_probability_per_pixel(tmp_path: Path) -> None:
    service = load(eager_model_dir(tmp_path, "image_segmenter", TinySegmenter))
    (output,) = payloads(service, [post(image_bytes(), "image/png")])
    pixels = torch.tensor(output)
    assert pixels.shape == (28, 28, 2)
    assert set(pixels[..., 0].unique().tolist()) <= {0.0, 1.0, 2.0}
    assert bool(((pixels[..., 1] >= 1 / 3) & (pixels[..., 1] <= 1)).all())


def test_object_detector_keeps_boxes_over_the_threshold_with_labels(tmp_path: Path) -> None:
    service = load(eager_model_dir(tmp_path, "object_detector", TinyDetector, labels=4))
    image = image_bytes()
    (detections,) = payloads(service, [post(image, "image/png")])
    with torch.no_grad():
        (raw,) = build(TinyDetector)(to_tensor(Image.open(io.BytesIO(image))).unsqueeze(0))
    kept = [i for i, score in enumerate(raw["scores"].tolist()) if score >= 0.5]
    assert [next(iter(d)) for d in detections] == [f"class_{i}" for i in kept]
    for detection, index in zip(detections, kept, strict=True):
        assert detection[f"class_{index}"] == pytest.approx(raw["boxes"][index].tolist())
        assert detection["score"] == pytest.approx(raw["scores"][index].item())


def test_text_normalisation_and_ngrams() -> None:
    tokens = normalise_text("<b>Don't</b> PANIC, it's   café time!")
    assert tokens == ["do", "not", "panic", "it", "is", "cafe", "time"]
    assert with_ngrams(["a", "b", "c"], 2) == ["a", "b", "c", "a b", "b c"]


def test_text_classifier_classifies_every_request_of_a_batch(tmp_path: Path) -> None:
    write_vocab(tmp_path, ["good", "bad", "movie", "good movie", "bad movie"])
    service = load(eager_model_dir(tmp_path, "text_classifier", TinyTextClassifier, labels=2))
    outputs = payloads(service, [post(b"Good movie!", "text/plain"), post(b"bad", "text/plain")])
    model = build(TinyTextClassifier)
    with torch.no_grad():
        scores = model(torch.tensor([1, 3, 4, 2]), torch.tensor([0, 3]))
    expected = torch.softmax(scores, 1).tolist()
    assert outputs == [pytest.approx({"class_0": row[0], "class_1": row[1]}) for row in expected]


def test_text_classifier_needs_its_vocabulary(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"source_vocab\.pt is missing"):
        load(eager_model_dir(tmp_path, "text_classifier", TinyTextClassifier))


def test_text_classifier_has_no_explanations(tmp_path: Path) -> None:
    write_vocab(tmp_path, ["good"])
    service = load(eager_model_dir(tmp_path, "text_classifier", TinyTextClassifier))
    (result,) = service.handle([post(b"good", "text/plain")], explain=True)
    assert result.status == 501
    assert "does not provide explanations" in json.loads(result.body)["message"]
