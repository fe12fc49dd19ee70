"""Training data: a synthetic motion set, video files and Kinetics-layout TFRecords, one pipeline."""

from movinet.data.errors import DataError, SkippedFiles, SkippedVideoWarning
from movinet.data.pipeline import DataConfig, DataInfo, make_datasets
from movinet.data.synthetic import synthetic_motion

__all__ = ["DataConfig", "DataError", "DataInfo", "SkippedFiles", "SkippedVideoWarning",
           "make_datasets", "synthetic_motion"]
