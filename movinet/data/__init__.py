"""Training data: a synthetic motion set, video files and Kinetics-layout TFRecords, one pipeline.

The settings (``DataConfig``) and errors need no TensorFlow; the pipeline (``make_datasets``,
``DataInfo``) is imported on first use, so that checking a data section stays fast.
"""

import importlib as _importlib

from movinet.data.config import DataConfig
from movinet.data.errors import DataError, LabelWarning, SkippedFiles, SkippedVideoWarning
from movinet.data.synthetic import synthetic_motion

_LAZY = {"DataInfo": "movinet.data.pipeline", "make_datasets": "movinet.data.pipeline"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'movinet.data' has no attribute {name!r}")


__all__ = ["DataConfig", "DataError", "DataInfo", "LabelWarning", "SkippedFiles", "SkippedVideoWarning",
           "make_datasets", "synthetic_motion"]
