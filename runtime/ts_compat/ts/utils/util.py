"""TorchServe's `ts.utils.util`: the helpers handlers import from it."""

from marfleet.runtime.handlers.errors import PredictionException as PredictionException
from marfleet.runtime.handlers.util import CLEANUP_REGEX as CLEANUP_REGEX
from marfleet.runtime.handlers.util import get_yaml_config as get_yaml_config
from marfleet.runtime.handlers.util import list_classes_from_module as list_classes_from_module
from marfleet.runtime.handlers.util import load_label_mapping as load_label_mapping
from marfleet.runtime.handlers.util import map_class_to_label as map_class_to_label
