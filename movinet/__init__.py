"""MoViNet model family: specs, one builder (base and stream modes), cost model."""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.pop("TF_USE_LEGACY_KERAS", None)  # Ray Train sets it; this package is Keras 3 code

from movinet.cost import cost, format_table, state_shapes  # noqa: E402
from movinet.model import MovinetClassifier, StateError, build_model  # noqa: E402
from movinet.options import ModelOptions, resolve_options  # noqa: E402
from movinet.spec import (ModelSpec, SpecError, dump_spec, load_spec, named_specs,  # noqa: E402
                          save_spec, spec_from_yaml)

__all__ = ["MovinetClassifier", "ModelOptions", "ModelSpec", "SpecError", "StateError", "build_model",
           "cost", "dump_spec", "format_table", "load_spec", "named_specs", "resolve_options",
           "save_spec", "spec_from_yaml", "state_shapes"]
