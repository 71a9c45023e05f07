"""BaseHandler: load a TorchScript or eager model and run preprocess -> inference -> postprocess.

Custom handlers subclass it and override hooks, reaching for its attributes (`self.model`,
`self.device`, `self.mapping`, `self.manifest`, `self.context`) and helpers
(`_load_pickled_model`, `_load_torchscript_model`), so those names and signatures are
TorchServe's. The model is chosen as TorchServe chooses it: with a `modelFile` in the manifest,
the one class that file defines is built and the serialized file is its state dict; without,
the serialized `.pt` file is TorchScript. The device is `cuda:<gpu_id>` when the worker was
given a GPU and CUDA is available, the CPU otherwise.
"""

from __future__ import annotations

import importlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from marfleet.runtime.handlers.context import Context
from marfleet.runtime.handlers.errors import PredictionException
from marfleet.runtime.handlers.timer import timed
from marfleet.runtime.handlers.util import list_classes_from_module, load_label_mapping

logger = logging.getLogger(__name__)

NOT_EXPLAINABLE = 501


def select_device(gpu_id: int | None) -> torch.device:
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device("cuda", int(gpu_id))
    return torch.device("cpu")


class BaseHandler:
    """The default handler: JSON numbers in, `tensor.tolist()` out; subclasses refine the hooks.

    TorchServe's `preprocess` hands the raw request rows to `torch.as_tensor`, which fails on
    them; this one takes each row's `data` or `body` first (rows that are not dicts pass as
    they are, so subclasses that extract values themselves and call super() still work).
    """

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, str] | None = None
        self.device: torch.device | None = None
        self.initialized = False
        self.context: Context | None = None
        self.model_pt_path: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.map_location: str | None = None
        self.explain = False
        self.target = 0
        self.model_yaml_config: dict[str, Any] = {}

    def initialize(self, context: Context) -> None:
        """Load the model named by the manifest onto the worker's device, and the label map."""
        self.context = context
        self.model_yaml_config = context.model_yaml_config
        properties = context.system_properties
        self.device = select_device(properties.get("gpu_id"))
        self.map_location = self.device.type
        self.manifest = context.manifest or {}
        model_dir = str(properties.get("model_dir"))
        model_section = self.manifest.get("model", {})
        serialized_file = model_section.get("serializedFile")
        self.model_pt_path = str(Path(model_dir, serialized_file)) if serialized_file else None
        model_file = model_section.get("modelFile", "")
        if model_file:
            self.model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
            self.model.to(self.device)
        elif self.model_pt_path and self.model_pt_path.endswith(".pt"):
            self.model = self._load_torchscript_model(self.model_pt_path)
        else:
            raise RuntimeError(
                f"no model weights could be loaded: the manifest names serializedFile "
                f"{serialized_file!r} and no modelFile; give a TorchScript .pt file, or an eager "
                "model's --model-file plus its state dict"
            )
        self.model.eval()
        self.mapping = load_label_mapping(Path(model_dir, "index_to_name.json"))
        self.initialized = True

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        with warnings.catch_warnings():
            # torch.jit is deprecated for new work; TorchScript is still what archives carry.
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_pickled_model(
        self, model_dir: str, model_file: str, model_pt_path: str | None
    ) -> torch.nn.Module:
        """Build the one class `model_file` defines and load the state dict into it."""
        if not Path(model_dir, model_file).is_file():
            raise RuntimeError(f"the model file {model_file} is missing from {model_dir}")
        module = importlib.import_module(model_file.split(".")[0])
        classes = list_classes_from_module(module)
        if len(classes) != 1:
            names = ", ".join(cls.__name__ for cls in classes) or "none"
            raise ValueError(
                f"{model_file} must define exactly one class (the model); it defines: {names}"
            )
        model: torch.nn.Module = classes[0]()
        if model_pt_path:
            state_dict = torch.load(model_pt_path, map_location=self.device, weights_only=True)
            model.load_state_dict(state_dict)
        return model

    @timed
    def preprocess(self, data: list[Any]) -> Any:
        """Each request's JSON numbers (its `data` or `body`) as one row of a batch tensor."""
        values = [
            (row.get("data") or row.get("body")) if isinstance(row, dict) else row for row in data
        ]
        return torch.as_tensor(values, device=self.device)

    @timed
    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    @timed
    def postprocess(self, data: Any) -> Any:
        return data.tolist()

    def handle(self, data: list[Any], context: Context) -> Any:
        """preprocess -> inference -> postprocess (or explain/describe), timed as HandlerTime."""
        start = time.perf_counter()
        self.context = context
        if self._is_describe():
            output = [self.describe_handle()]
        else:
            preprocessed = self.preprocess(data)
            if self._is_explain():
                output = self.explain_handle(preprocessed, data)
            else:
                output = self.postprocess(self.inference(preprocessed))
        elapsed_ms = round((time.perf_counter() - start) * 1000, 2)
        context.metrics.add_time("HandlerTime", elapsed_ms, None, "ms")
        return output

    def explain_handle(self, data_preprocess: Any, raw_data: list[Any]) -> Any:
        """Explanations for the batch; the target class comes from the first row's `target`."""
        row = raw_data[0]
        inputs, target = None, 0
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        return self.get_insights(data_preprocess, inputs, target)

    def get_insights(self, tensor_data: Any, raw_input: Any, target: Any = 0) -> Any:
        raise PredictionException(
            f"{type(self).__name__} does not provide explanations (it defines no get_insights)",
            NOT_EXPLAINABLE,
        )

    def _is_explain(self) -> bool:
        if self.context is not None and self.context.get_request_header(0, "explain") == "True":
            self.explain = True
            return True
        return False

    def _is_describe(self) -> bool:
        return self.context is not None and self.context.get_request_header(0, "describe") == "True"

    def describe_handle(self) -> Any:
        """What a `describe: True` request returns; None unless a subclass says more."""
        return None

    def get_device(self) -> torch.device | None:
        return self.device
