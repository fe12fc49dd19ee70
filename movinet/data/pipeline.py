"""One tf.data pipeline for every source: synthetic clips, video folders or CSVs, TFRecords.

    items -> shuffle (train) -> decode -> drop unreadable -> clip in time -> crop in space -> batch

Training clips start at a random frame and get a random resized crop (area and aspect ranges of
the official recipe) and, where it does not change the label, a horizontal flip; evaluation clips
are the centre clip and the centre crop. Videos are uint8 until the last step, which yields
float32 RGB in [0, 1], the input range of MoViNets (no mean/std normalisation).

Randomness is stateless and seeded per element from ``DataConfig.seed`` and, as tf.data combines
every op seed with it, TF's global seed (``tf.random.set_seed``; ``movinet.train`` sets it). With
both fixed a pipeline gives the same batches in every process, and different augmentations and
orders in every epoch.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from movinet.data import synthetic, tfrecord, video
from movinet.data.config import DataConfig, check_batch_fits, synthetic_classes
from movinet.data.config import SHORT_SIDE_RATIO, SOURCES  # noqa: F401  (their old home)
from movinet.data.errors import DataError, SkippedFiles

VAL_FOLDER_NAMES = ("val", "validation", "test")


@dataclasses.dataclass
class DataInfo:
    """What the pipeline found: the classes, the clip counts, and the files it had to skip.

    ``skipped`` fills up while the datasets are iterated, as unreadable videos are met.
    """

    source: str
    num_classes: int
    class_names: list[str]
    num_train: int
    num_val: int
    skipped: SkippedFiles = dataclasses.field(default_factory=SkippedFiles)

    @property
    def skipped_count(self) -> int:
        return self.skipped.count

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "num_classes": self.num_classes, "class_names": self.class_names,
                "num_train": self.num_train, "num_val": self.num_val, "skipped": self.skipped.reasons}


@dataclasses.dataclass
class _Source:
    """The source-specific half of the pipeline; everything else is shared."""

    info: DataInfo
    items: Callable[[bool], tf.data.Dataset]          # training -> dataset of raw items
    decode: Callable[..., tuple]                      # (*item, training) -> (frames, label, ok)
    stride: int                                       # frame step left to take after decode
    decode_clip: Callable[[tf.Tensor], tf.Tensor] | None = None   # for frames kept encoded
    shuffle_buffer: int | None = None                 # None: shuffle every item
    shard_policy: tf.data.experimental.AutoShardPolicy = tf.data.experimental.AutoShardPolicy.DATA


def make_datasets(config: DataConfig) -> tuple[tf.data.Dataset, tf.data.Dataset, DataInfo]:
    """(train, val, info): batches of (float32 [B, T, R, R, 3] in [0, 1], int32 [B]).

    Raises:
      DataError: no usable data, a single class, an unknown label, an empty TFRecord, or a batch
        size larger than the training set.
    """
    opener = {"synthetic": _synthetic_source, "folder": _folder_source, "csv": _csv_source,
              "tfrecord": _tfrecord_source}[config.source]
    source = opener(config)
    info = source.info
    if config.num_classes is not None and config.num_classes != info.num_classes:
        raise DataError(f"num_classes={config.num_classes} but the {config.source} data has "
                        f"{info.num_classes} classes")
    check_batch_fits(config.batch_size, info.num_train)
    if info.num_val == 0:
        raise DataError(f"{config.val_path or config.path}: no validation clips")
    return _batched(source, config, training=True), _batched(source, config, training=False), info


def _batched(source: _Source, config: DataConfig, training: bool) -> tf.data.Dataset:
    parallel = config.parallel_calls or tf.data.AUTOTUNE
    dataset = source.items(training)
    if training:
        buffer = source.shuffle_buffer or max(source.info.num_train, 1)
        dataset = dataset.shuffle(buffer, seed=config.seed, reshuffle_each_iteration=True)
    # Every function mapped here branches on Python values only (training, augment, the config), so
    # AutoGraph's source conversion, ~2 s of a process's first make_datasets on 2 cores, is skipped.
    plain = tf.autograph.experimental.do_not_convert
    dataset = dataset.map(plain(lambda *item: source.decode(*item, training=training)), num_parallel_calls=parallel)
    dataset = dataset.filter(plain(lambda frames, label, ok: ok))
    if training:
        seeds = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True).batch(2)
    else:
        seeds = tf.data.Dataset.from_tensors(tf.zeros([2], tf.int64)).repeat()
    dataset = tf.data.Dataset.zip(dataset, seeds)

    def clip(element, seed):
        frames, label, _ = element
        time_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        indices = clip_indices(tf.shape(frames)[0], config.frames, source.stride, training, time_seed)
        frames = tf.gather(frames, indices)
        if source.decode_clip is not None:
            frames = source.decode_clip(frames)
        return crop_clip(frames, config, training and config.augment, crop_seed), label

    dataset = dataset.map(plain(clip), num_parallel_calls=parallel)
    batch_size = config.batch_size if training else (config.eval_batch_size or config.batch_size)
    dataset = dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    # Without tf.data's model-based autotuning: dropping an iterator waited for its optimisation
    # thread's sleep, up to ~5-12 s (measured: trials on one CPU each, epochs of 5 s taking 10 s,
    # a run's end taking 12 s). AUTOTUNE map parallelism is then one call per core (at most 16),
    # and prefetch buffers still grow on their own (their autotuner is separate).
    options.autotune.enabled = False
    options.experimental_distribute.auto_shard_policy = source.shard_policy
    return dataset.with_options(options)


def clip_indices(num_frames: tf.Tensor, frames: int, stride: int, training: bool,
                 seed: tf.Tensor) -> tf.Tensor:
    """Frame indices of one clip: a random start in training, the centre clip in evaluation.

    A video shorter than the clip is looped, as a clip must have exactly ``frames`` frames.
    """
    span = (frames - 1) * stride + 1
    room = tf.maximum(num_frames - span, 0)
    if training:
        start = tf.random.stateless_uniform([], seed, 0, room + 1, dtype=tf.int32)
    else:
        start = room // 2
    return (start + tf.range(frames) * stride) % num_frames


def crop_clip(frames: tf.Tensor, config: DataConfig, augment: bool, seed: tf.Tensor) -> tf.Tensor:
    """float32 [T, R, R, 3] in [0, 1] from uint8 [T, h, w, 3]: one crop for every frame.

    Augmented: a random resized crop (area and aspect ranges of ``config``) and an optional
    horizontal flip. Otherwise: the centre square whose side is ``resolution / min_image_size`` of
    the short side, i.e. scaling the short side to ``min_image_size`` then cutting the centre.
    """
    shape = tf.shape(frames)
    height, width = shape[1], shape[2]
    if augment:
        box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.stack([height, width, 3]), tf.zeros([1, 0, 4]), seed=box_seed,
            area_range=(config.min_area, config.max_area),
            aspect_ratio_range=(config.min_aspect, config.max_aspect),
            max_attempts=100, use_image_if_no_bounding_boxes=True)
        top, left, crop_height, crop_width = begin[0], begin[1], size[0], size[1]
    else:
        short = tf.minimum(height, width)
        side = tf.maximum(tf.cast(tf.round(tf.cast(short, tf.float32) * config.resolution
                                           / config.short_side), tf.int32), 1)
        side = tf.minimum(side, short)
        top, left, crop_height, crop_width = (height - side) // 2, (width - side) // 2, side, side
    frames = frames[:, top:top + crop_height, left:left + crop_width, :]
    frames = tf.image.resize(frames, [config.resolution, config.resolution], antialias=True)
    if augment and config.flips:
        flip = tf.random.stateless_uniform([], flip_seed) < 0.5
        frames = tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
    frames = tf.clip_by_value(frames / 255.0, 0.0, 1.0)
    frames.set_shape([config.frames, config.resolution, config.resolution, 3])
    return frames


# Synthetic clips are a function of their index, split and the config, so each pipeline keeps the
# ones it rendered, up to this many bytes, instead of drawing them again every epoch (a demo search
# trial's 640 clips of 8x32x32 cost ~0.55 ms each, on the core its training runs on).
SYNTHETIC_CACHE_BYTES = 256 * 2 ** 20


class _RenderedClips:
    """Rendered synthetic clips by (split, index), kept while they fit in ``budget`` bytes."""

    def __init__(self, render: Callable[[int, str], np.ndarray], budget: int):
        self.render, self.budget = render, budget
        self.clips: dict[tuple[str, int], np.ndarray] = {}
        self.lock = threading.Lock()

    def __call__(self, index: int, split: str) -> np.ndarray:
        key = (split, index)
        clip = self.clips.get(key)
        if clip is None:
            clip = self.render(index, split)
            with self.lock:
                if clip.nbytes <= self.budget and key not in self.clips:
                    self.clips[key] = clip
                    self.budget -= clip.nbytes
        return clip


def _synthetic_source(config: DataConfig) -> _Source:
    num_classes = synthetic_classes(config)
    counts = {True: config.train_clips, False: config.val_clips}
    rendered = _RenderedClips(lambda i, split: synthetic.render_clip(i, config.frames, config.short_side,
                                                                     num_classes, config.seed, split),
                              SYNTHETIC_CACHE_BYTES)

    def decode(index, training):
        split = "train" if training else "val"
        frames = tf.numpy_function(lambda i: rendered(int(i), split), [index], tf.uint8, stateful=False)
        frames.set_shape([config.frames, config.short_side, config.short_side, 3])
        label = tf.cast(index % num_classes, tf.int32)
        return frames, label, tf.constant(True)

    names = [f"direction_{round(360 * k / num_classes)}" for k in range(num_classes)]
    info = DataInfo("synthetic", num_classes, names, config.train_clips, config.val_clips)
    return _Source(info, lambda training: tf.data.Dataset.range(counts[training]), decode, stride=1)


def _folder_source(config: DataConfig) -> _Source:
    train_root, val_root = config.path, config.val_path
    if val_root is None and os.path.isdir(os.path.join(config.path, "train")):
        val_root = next((os.path.join(config.path, name) for name in VAL_FOLDER_NAMES
                         if os.path.isdir(os.path.join(config.path, name))), None)
        train_root = os.path.join(config.path, "train") if val_root else config.path
    if val_root is None:
        items, names = video.scan_class_folder(train_root, config.class_names)
        train_items, val_items = video.split_items(items, config.val_fraction, config.seed)
    else:
        train_items, names = video.scan_class_folder(train_root, config.class_names)
        val_items, _ = video.scan_class_folder(val_root, names)
    return _video_source(config, train_items, val_items, names, "folder")


def _csv_source(config: DataConfig) -> _Source:
    if not config.val_path:
        raise DataError(f"{config.path}: a CSV source needs a validation CSV (val_path)")
    train_items, names = video.read_label_csv(config.path, config.class_names)
    val_items, _ = video.read_label_csv(config.val_path, names)
    return _video_source(config, train_items, val_items, names, "csv")


def _video_source(config: DataConfig, train_items, val_items, names, kind: str) -> _Source:
    info = DataInfo(kind, len(names), names, len(train_items), len(val_items))
    reader = video.VideoReader(video.DecodeParams(config.short_side, config.stride, config.fps),
                               config.cache_dir, info.skipped)
    empty = np.zeros([0, 1, 1, 3], np.uint8)

    def read(path):
        frames = reader(path.decode())
        return (empty, False) if frames is None else (frames, True)

    def decode(path, label, training):
        frames, ok = tf.numpy_function(read, [path], [tf.uint8, tf.bool])
        frames.set_shape([None, None, None, 3])
        ok.set_shape([])
        return frames, label, ok

    def items(training):
        chosen = train_items if training else val_items
        return tf.data.Dataset.from_tensor_slices(
            ([path for path, _ in chosen], np.array([label for _, label in chosen], np.int32)))

    # fps resampling or the stride is applied while decoding, so clips take consecutive frames.
    return _Source(info, items, decode, stride=1)


def _tfrecord_source(config: DataConfig) -> _Source:
    if not config.val_path:
        raise DataError(f"{config.path}: a TFRecord source needs validation TFRecords (val_path)")
    if config.fps is not None:
        raise DataError("TFRecords hold frames without times; use stride instead of fps")
    train_files = tfrecord.list_tfrecord_files(config.path)
    val_files = tfrecord.list_tfrecord_files(config.val_path)
    num_train, train_labels = tfrecord.scan_tfrecords(train_files)
    num_val, _ = tfrecord.scan_tfrecords(val_files)
    for files, count in ((train_files, num_train), (val_files, num_val)):
        if count == 0:
            raise DataError(f"{files[0]}{' ...' if len(files) > 1 else ''}: empty TFRecord (no records)")
    if min(train_labels) < 0:
        raise DataError(f"{config.path}: negative label {min(train_labels)}")
    num_classes = config.num_classes or max(train_labels) + 1
    if max(train_labels) >= num_classes:
        raise DataError(f"{config.path}: label {max(train_labels)} is outside num_classes={num_classes}")
    names = config.class_names or [train_labels.get(i) or str(i) for i in range(num_classes)]
    info = DataInfo("tfrecord", num_classes, list(names), num_train, num_val)

    def items(training):
        chosen = train_files if training else val_files
        files = tf.data.Dataset.from_tensor_slices(chosen)
        if training:
            files = files.shuffle(len(chosen), seed=config.seed, reshuffle_each_iteration=True)
        cycle = min(4, len(chosen))
        return files.interleave(tf.data.TFRecordDataset, cycle_length=cycle, num_parallel_calls=cycle,
                                deterministic=True)

    def decode(serialized, training):
        encoded, label = tfrecord.parse_sequence_example(serialized)
        return encoded, label, tf.size(encoded) > 0

    return _Source(info, items, decode, stride=config.stride, decode_clip=tfrecord.decode_frames,
                   shuffle_buffer=config.shuffle_buffer,
                   shard_policy=tf.data.experimental.AutoShardPolicy.AUTO)
