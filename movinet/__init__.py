"""MoViNet model family: specs, one builder (base and stream modes), cost model.

Specs, options and the cost model need no TensorFlow; the builder and the model class are
imported on first use, so that cost-only users (search drivers, ``movinet info``) start fast.
"""

import importlib as _importlib
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.pop("TF_USE_LEGACY_KERAS", None)  # Ray Train sets it; this package is Keras 3 code

from movinet.cost import cost, format_table, state_shapes  # noqa: E402
from movinet.options import ModelOptions, resolve_options  # noqa: E402
from movinet.spec import (ModelSpec, SpecError, dump_spec, load_spec, named_specs,  # noqa: E402
                          save_spec, spec_from_yaml)

_LAZY = {"MovinetClassifier": "movinet.model", "StateError": "movinet.model", "build_model": "movinet.model",
         "fold_batch_norm": "movinet.model", "FoldedError": "movinet.folding"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'movinet' has no attribute {name!r}")


__all__ = ["FoldedError", "MovinetClassifier", "ModelOptions", "ModelSpec", "SpecError", "StateError",
           "build_model", "cost", "dump_spec", "fold_batch_norm", "format_table", "load_spec", "named_specs",
           "resolve_options", "save_spec", "spec_from_yaml", "state_shapes"]
