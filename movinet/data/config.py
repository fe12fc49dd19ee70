"""Data settings without TensorFlow: ``DataConfig`` and the checks that need no data.

A search driver validates its ``data`` section with these alone, so it never imports TensorFlow
(about 3 s per search); the pipeline (``movinet.data.pipeline``) builds datasets from them.
"""

from __future__ import annotations

import dataclasses
import glob

from movinet.data.errors import DataError
from movinet.options import Settings

SOURCES = ("synthetic", "folder", "csv", "tfrecord")
SHORT_SIDE_RATIO = 1.125   # decode short side / crop size (official: 192 for 172, 288 for 256)
SYNTHETIC_CLASSES = 4      # directions of the synthetic motion set when num_classes is not given


@dataclasses.dataclass
class DataConfig(Settings):
    """Where clips come from and how they are cut.

    ``path`` is the folder (class sub-folders, or ``train/`` and ``val/`` folders of them), the
    training CSV, or the training TFRecords (file, folder or glob); ``val_path`` the validation
    counterpart. A class folder without ``val_path`` is split by ``val_fraction``. ``stride`` takes
    every stride-th source frame, or ``fps`` resamples to a frame rate. ``min_image_size`` is the
    short side a video is scaled to before cropping ``resolution`` (default 1.125x resolution,
    or the rendered size for synthetic clips). ``flip`` defaults to on, except for the synthetic
    set whose labels are directions that a mirror image would change.
    """

    source: str = "synthetic"
    path: str | None = None
    val_path: str | None = None
    frames: int = 8
    stride: int = 1
    fps: float | None = None
    resolution: int = 64
    batch_size: int = 8
    eval_batch_size: int | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    val_fraction: float = 0.2
    min_image_size: int | None = None
    augment: bool = True
    min_area: float = 0.08
    max_area: float = 1.0
    min_aspect: float = 0.5
    max_aspect: float = 2.0
    flip: bool | None = None
    train_clips: int = 512
    val_clips: int = 128
    cache_dir: str | None = None
    shuffle_buffer: int = 256
    parallel_calls: int | None = None
    seed: int = 0

    settings_error, settings_kind = DataError, "data"

    def __post_init__(self):
        if self.source not in SOURCES:
            raise DataError(f"source={self.source!r}: expected one of {list(SOURCES)}")
        if self.source != "synthetic" and not self.path:
            raise DataError(f"source={self.source!r} needs a path")
        for field in ("frames", "stride", "resolution", "batch_size", "train_clips", "val_clips",
                      "shuffle_buffer"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"{field}={value!r}: expected a positive integer")
        if self.fps is not None and self.fps <= 0:
            raise DataError(f"fps={self.fps!r}: expected a positive frame rate")
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"val_fraction={self.val_fraction!r}: expected a fraction in (0, 1)")
        if not 0.0 < self.min_area <= self.max_area <= 1.0:
            raise DataError(f"area range [{self.min_area}, {self.max_area}]: expected 0 < min <= max <= 1")
        if not 0.0 < self.min_aspect <= self.max_aspect:
            raise DataError(f"aspect range [{self.min_aspect}, {self.max_aspect}]: expected 0 < min <= max")

    @property
    def flips(self) -> bool:
        return self.flip if self.flip is not None else self.source != "synthetic"

    @property
    def short_side(self) -> int:
        if self.min_image_size:
            return self.min_image_size
        return self.resolution if self.source == "synthetic" else round(self.resolution * SHORT_SIDE_RATIO)



def check_paths_exist(config: DataConfig) -> None:
    """The data's files are there (a TFRecord path may be a glob), without reading them: what a
    search driver that is given ``num_classes`` can check before any trial starts."""
    for path in (config.path, config.val_path):
        if path is not None and not glob.glob(path):
            raise DataError(f"{path}: no such {config.source} data (no file or folder there)")


def check_batch_fits(batch_size: int, num_train: int) -> None:
    """A training batch must fit in the training set (batches drop their remainder)."""
    if num_train < batch_size:
        raise DataError(f"batch_size={batch_size} is larger than the {num_train} training clips; "
                        "lower --batch-size")


def synthetic_classes(config: DataConfig) -> int:
    """The synthetic set's number of classes, after the checks its pipeline would make: its clips
    are rendered on demand, so nothing has to be read to know them."""
    num_classes = config.num_classes or SYNTHETIC_CLASSES
    if num_classes < 2:
        raise DataError(f"num_classes={num_classes}: the synthetic set needs at least 2 directions")
    check_batch_fits(config.batch_size, config.train_clips)
    return num_classes
