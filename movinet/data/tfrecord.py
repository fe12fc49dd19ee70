"""TFRecords of tf.train.SequenceExample in the Kinetics layout of the official training.

One record per video: JPEG frames under the feature list ``image/encoded`` and the class index
under the context feature ``clip/label/index`` (optionally its name under ``clip/label/text``).
Clip frames are chosen before decoding, so only the frames a clip uses are decoded.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from movinet.data.errors import DataError

IMAGE_KEY = "image/encoded"
LABEL_KEY = "clip/label/index"
LABEL_TEXT_KEY = "clip/label/text"


def make_sequence_example(frames: np.ndarray, label: int, label_text: str | None = None,
                          quality: int = 90) -> tf.train.SequenceExample:
    """A Kinetics-layout record of uint8 frames [T, H, W, 3], JPEG-encoded."""
    context = {LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}
    if label_text is not None:
        context[LABEL_TEXT_KEY] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[label_text.encode()]))
    encoded = [tf.io.encode_jpeg(frame, quality=quality).numpy() for frame in np.asarray(frames, np.uint8)]
    images = tf.train.FeatureList(feature=[
        tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])) for jpeg in encoded])
    return tf.train.SequenceExample(context=tf.train.Features(feature=context),
                                    feature_lists=tf.train.FeatureLists(feature_list={IMAGE_KEY: images}))


def write_tfrecord(path: str | os.PathLike, examples: Iterable[tf.train.SequenceExample]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example.SerializeToString())
    return path


def list_tfrecord_files(pattern: str | os.PathLike) -> list[str]:
    """The files of a path that is one file, a folder (every file in it) or a glob pattern."""
    text = str(pattern)
    if os.path.isdir(text):
        files = sorted(str(p) for p in Path(text).iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = sorted(glob.glob(text))
    if not files:
        raise DataError(f"{text}: no TFRecord files")
    return files


def parse_sequence_example(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(JPEG strings [n], int32 label) of one serialized record."""
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)},
        sequence_features={IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
    return sequence[IMAGE_KEY], tf.cast(context[LABEL_KEY], tf.int32)


def decode_frames(encoded: tf.Tensor) -> tf.Tensor:
    """uint8 [n, h, w, 3] from JPEG strings [n]."""
    return tf.map_fn(lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3), encoded,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def scan_tfrecords(files: Sequence[str]) -> tuple[int, dict[int, str]]:
    """(number of records, label index -> label text or '') over ``files``; one pass, no JPEG decoding."""
    def labels(serialized):
        context, _ = tf.io.parse_single_sequence_example(
            serialized,
            context_features={LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
                              LABEL_TEXT_KEY: tf.io.FixedLenFeature([], tf.string, default_value="")})
        return context[LABEL_KEY], context[LABEL_TEXT_KEY]

    names: dict[int, str] = {}
    count = 0
    dataset = tf.data.TFRecordDataset(list(files)).map(tf.autograph.experimental.do_not_convert(labels),
                                                      num_parallel_calls=tf.data.AUTOTUNE)
    try:
        for index, text in dataset.batch(1024).as_numpy_iterator():
            count += len(index)
            for i, t in zip(index.tolist(), text.tolist()):
                names.setdefault(i, t.decode())
    except tf.errors.OpError as err:
        raise DataError(f"{files[0]}{' ...' if len(files) > 1 else ''}: not readable as Kinetics-layout "
                        f"TFRecords ({err.message.splitlines()[0]})") from None
    return count, names
