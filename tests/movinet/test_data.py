"""Data: the synthetic motion set, video folders and CSVs, Kinetics TFRecords, one pipeline."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from movinet.data import DataConfig, DataError, LabelWarning, SkippedVideoWarning, make_datasets, synthetic_motion
from movinet.data import tfrecord, video
from tests.helpers import CODECS, write_video

tf.config.threading.set_inter_op_parallelism_threads(2)
tf.config.threading.set_intra_op_parallelism_threads(2)

def counting_frames(count: int, height: int = 32, width: int = 48) -> np.ndarray:
    """Frame i is uniformly grey at level 8 * i, so a decoded frame tells its source index."""
    return np.repeat(np.arange(count, dtype=np.uint8)[:, None, None, None] * 8, height * width * 3
                     ).reshape(count, height, width, 3)


def source_index(frames: np.ndarray) -> list[int]:
    return [int(round(level / 8)) for level in frames.reshape(len(frames), -1).mean(axis=1)]


def first_batches(dataset, count=2):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


# --- the synthetic motion set ----------------------------------------------------------------

def test_synthetic_is_deterministic_and_prefix_stable():
    videos, labels = synthetic_motion(12, 6, 24, num_classes=3, seed=5)
    again, again_labels = synthetic_motion(12, 6, 24, num_classes=3, seed=5)
    prefix, _ = synthetic_motion(4, 6, 24, num_classes=3, seed=5)
    other, _ = synthetic_motion(12, 6, 24, num_classes=3, seed=6)
    assert videos.shape == (12, 6, 24, 24, 3) and videos.dtype == np.float32
    assert 0.0 <= videos.min() and videos.max() <= 1.0
    np.testing.assert_array_equal(videos, again)
    np.testing.assert_array_equal(labels, again_labels)
    np.testing.assert_array_equal(videos[:4], prefix)
    assert np.abs(videos - other).mean() > 0.05
    assert np.bincount(labels).tolist() == [4, 4, 4]


def _shift_between(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The (row, col) circular shift from one frame to the next, by phase correlation."""
    a = np.fft.fft2(first.mean(-1) - first.mean())
    b = np.fft.fft2(second.mean(-1) - second.mean())
    cross = b * np.conj(a)
    peak = np.unravel_index(np.argmax(np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real), first.shape[:2])
    size = np.array(first.shape[:2])
    return (np.array(peak) + size // 2) % size - size // 2


def _frame_features(frames: np.ndarray) -> np.ndarray:
    """Per-frame statistics: channel means and spreads, and where the bright shape is."""
    size = frames.shape[1]
    brightness = frames.mean(-1)
    mask = brightness > np.quantile(brightness, 0.9, axis=(1, 2), keepdims=True)
    angles = 2 * np.pi * (np.arange(size) + 0.5) / size
    rows = np.stack([np.cos(angles)[:, None] * mask, np.sin(angles)[:, None] * mask]).sum((2, 3))
    cols = np.stack([np.cos(angles)[None] * mask, np.sin(angles)[None] * mask]).sum((2, 3))
    positions = np.concatenate([rows, cols]).T / mask.sum((1, 2))[:, None]
    return np.concatenate([frames.mean((1, 2)), frames.std((1, 2)), positions, mask.mean((1, 2))[:, None]], 1)


def _linear_accuracy(train_x, train_y, test_x, test_y, num_classes):
    """Held-out accuracy of a least-squares linear classifier on quadratic features."""
    def expand(x):
        x = (x - train_x.mean(0)) / (train_x.std(0) + 1e-9)
        return np.concatenate([np.ones((len(x), 1)), x, (x[:, :, None] * x[:, None, :]).reshape(len(x), -1)], 1)
    weights, *_ = np.linalg.lstsq(expand(train_x), np.eye(num_classes)[train_y], rcond=None)
    return float((np.argmax(expand(test_x) @ weights, 1) == test_y).mean())


def test_single_frames_carry_no_class_information_but_clips_do():
    frames, resolution, classes = 4, 32, 4
    videos, labels = synthetic_motion(800, frames, resolution, num_classes=classes, seed=1)
    # Any single frame: statistics and shape position do not predict the class.
    for t in (0, frames - 1):
        features = _frame_features(videos[:, t])
        accuracy = _linear_accuracy(features[:600], labels[:600], features[600:], labels[600:], classes)
        assert accuracy < 0.36, f"frame {t} predicts the class with accuracy {accuracy}"
    # Two frames together: the shift between them gives the direction.
    shifts = np.array([_shift_between(v[0], v[1]) for v in videos[:200]])
    angles = np.arctan2(-shifts[:, 0], shifts[:, 1])
    predicted = np.round(angles / (2 * np.pi / classes)).astype(int) % classes
    assert (predicted == labels[:200]).mean() > 0.95


# --- the pipeline ------------------------------------------------------------------------------

SMALL = dict(frames=4, resolution=24, batch_size=4, train_clips=16, val_clips=8, parallel_calls=2)


def test_pipeline_batches_are_deterministic_and_reshuffled_each_epoch():
    train, val, info = make_datasets(DataConfig(**SMALL))
    assert (info.num_classes, info.num_train, info.num_val, info.skipped_count) == (4, 16, 8, 0)
    assert train.element_spec[0].shape.as_list() == [4, 4, 24, 24, 3]
    epoch_1, epoch_2 = first_batches(train), first_batches(train)
    fresh = first_batches(make_datasets(DataConfig(**SMALL))[0])
    for (x1, y1), (x3, y3) in zip(epoch_1, fresh):
        np.testing.assert_array_equal(x1, x3)
        np.testing.assert_array_equal(y1, y3)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(epoch_1, epoch_2))
    x, _ = epoch_1[0]
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("budget", [None, 0])
def test_synthetic_clips_are_rendered_once_per_pipeline_while_they_fit(budget, monkeypatch):
    """Each clip is drawn once and kept (the augmentation still changes every epoch); with no
    room left, clips are drawn again each epoch, and the batches are the same either way."""
    from movinet.data import pipeline, synthetic

    rendered = []
    draw = synthetic.render_clip
    monkeypatch.setattr(synthetic, "render_clip", lambda index, *args: rendered.append(index) or draw(index, *args))
    if budget is not None:
        monkeypatch.setattr(pipeline, "SYNTHETIC_CACHE_BYTES", budget)
    train, val, _ = make_datasets(DataConfig(**SMALL))
    epochs = [list(train.as_numpy_iterator()) for _ in range(2)]
    list(val.as_numpy_iterator())
    list(val.as_numpy_iterator())
    assert len(rendered) == (16 + 8 if budget is None else 2 * (16 + 8))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(*epochs))
    monkeypatch.setattr(pipeline, "SYNTHETIC_CACHE_BYTES", 0)
    uncached = list(make_datasets(DataConfig(**SMALL))[0].as_numpy_iterator())
    for (x, y), (x_uncached, y_uncached) in zip(epochs[0], uncached):
        np.testing.assert_array_equal(x, x_uncached)
        np.testing.assert_array_equal(y, y_uncached)


def test_one_iterator_runs_every_epoch_without_model_autotuning():
    """Training draws all its epochs from one iterator over the repeated pipeline
    (``Trainer.batches``): each pass holds every clip once, reshuffled and re-augmented like a new
    epoch. Neither
    pipeline uses tf.data's model-based autotuning, whose optimisation thread held up the drop of
    an iterator for 5-12 s."""
    train, val, _ = make_datasets(DataConfig(**SMALL))
    assert train.options().autotune.enabled is False and val.options().autotune.enabled is False
    batches = list(train.repeat().take(8).as_numpy_iterator())   # 16 clips in batches of 4: 4 a pass
    first, second = batches[:4], batches[4:]
    assert sorted(np.concatenate([y for _, y in first])) == sorted(np.concatenate([y for _, y in second]))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, second))


def test_eval_pipeline_gives_the_synthetic_clips_unchanged():
    _, val, _ = make_datasets(DataConfig(**SMALL))
    clips = np.concatenate([x for x, _ in val.as_numpy_iterator()])
    labels = np.concatenate([y for _, y in val.as_numpy_iterator()])
    expected, expected_labels = synthetic_motion(8, 4, 24, seed=0, split="val")
    np.testing.assert_allclose(clips, expected, atol=1e-6)
    np.testing.assert_array_equal(labels, expected_labels)


def test_clip_indices_and_crops():
    from movinet.data.pipeline import clip_indices, crop_clip
    seed = tf.constant([1, 2], tf.int64)
    assert clip_indices(tf.constant(20), 4, 3, False, seed).numpy().tolist() == [5, 8, 11, 14]
    assert clip_indices(tf.constant(3), 5, 1, False, seed).numpy().tolist() == [0, 1, 2, 0, 1]
    starts = {int(clip_indices(tf.constant(20), 4, 3, True, tf.constant([i, 0], tf.int64))[0]) for i in range(40)}
    assert starts <= set(range(11)) and len(starts) > 3
    # A 36x54 frame whose left and right halves differ: the centre crop keeps both sides.
    frames = np.zeros([2, 36, 54, 3], np.uint8)
    frames[:, :, 27:] = 255
    config = DataConfig(frames=2, resolution=32, min_image_size=36, source="synthetic")
    centre = crop_clip(tf.constant(frames), config, False, seed).numpy()
    assert centre.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(centre[:, :, :14], 0.0, atol=1e-6)
    np.testing.assert_allclose(centre[:, :, 18:], 1.0, atol=1e-6)
    # Random crops of a noise clip, with and without flips, from the same seeds: each flipped crop is
    # the unflipped one mirrored left to right (np.flip), pixel for pixel, some of them.
    noise = tf.constant(np.random.default_rng(9).integers(0, 256, [2, 36, 54, 3], dtype=np.uint8))
    flipped = 0
    for i in range(20):
        seed = tf.constant([i, 7], tf.int64)
        plain, maybe = (crop_clip(noise, DataConfig(frames=2, resolution=32, flip=flip), True, seed).numpy()
                        for flip in (False, True))
        assert maybe.shape == (2, 32, 32, 3) and not np.array_equal(plain[0], plain[1])
        mirrored = np.array_equal(maybe, np.flip(plain, axis=2))
        assert mirrored or np.array_equal(maybe, plain), f"seed {i}"
        flipped += mirrored
    assert 3 <= flipped <= 17
    crops = [crop_clip(noise, DataConfig(frames=2, resolution=32), True, tf.constant([i, 7], tf.int64)).numpy()
             for i in range(20)]
    assert len({round(float(c.mean()), 3) for c in crops}) > 5


# --- video files -------------------------------------------------------------------------------

def test_decode_video_by_stride_and_by_fps(tmp_path):
    path = str(write_video(tmp_path / "count.avi", counting_frames(20)))
    every_other = video.decode_video(path, video.DecodeParams(short_side=16, stride=2))
    assert every_other.shape == (10, 16, 24, 3)
    assert source_index(every_other) == list(range(0, 20, 2))
    assert source_index(video.decode_video(path, video.DecodeParams(16, fps=5))) == [0, 5, 10, 15]
    doubled = source_index(video.decode_video(path, video.DecodeParams(16, fps=50)))
    assert doubled[:6] == [0, 0, 1, 1, 2, 2] and len(doubled) in (39, 40)


def test_a_truncated_faststart_mp4_is_skipped_and_counted(tmp_path):
    """Its index at the front lists 16 frames; cut in half, PyAV decodes a few without an error.
    (Noise frames: their data, not the index, fills most of the file.)"""
    noise = np.random.default_rng(0).integers(0, 256, (16, 32, 48, 3), dtype=np.uint8)
    whole = write_video(tmp_path / "whole.mp4", noise, options={"movflags": "faststart"})
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    reader = video.VideoReader(video.DecodeParams(short_side=16))
    assert reader(str(whole)).shape[0] == 16
    with pytest.warns(SkippedVideoWarning, match=r"truncated.mp4: truncated: \d+ of the 16 frames"):
        assert reader(str(truncated)) is None
    assert reader.skipped.count == 1


def make_class_folder(root: Path, per_class: int = 3, frames: int = 10) -> Path:
    """Three classes of tiny clips in every container the pipeline reads."""
    extensions = list(CODECS)
    for c, name in enumerate(["jump", "run", "walk"]):
        for i in range(per_class):
            clip = counting_frames(frames, 24, 32)
            clip[..., c] = 200
            write_video(root / name / f"{name}_{i}{extensions[(c + i) % len(extensions)]}", clip)
    return root


def test_folder_source_skips_and_counts_corrupt_files_and_caches(tmp_path, monkeypatch):
    root = make_class_folder(tmp_path / "videos")
    (root / "run" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    (root / "walk" / "empty.avi").write_bytes(b"")
    (root / "walk" / "notes.txt").write_text("not a video")
    cache = tmp_path / "cache"
    config = DataConfig(source="folder", path=str(root), val_fraction=0.34, frames=4, stride=2,
                        resolution=16, batch_size=2, cache_dir=str(cache), parallel_calls=2)
    train, val, info = make_datasets(config)
    assert info.class_names == ["jump", "run", "walk"]
    assert info.num_train + info.num_val == 11
    with pytest.warns(SkippedVideoWarning):
        val_labels = np.concatenate([y for _, y in val.as_numpy_iterator()])
        train_clips = list(train.as_numpy_iterator())
    assert info.skipped_count == 2
    assert {Path(p).name for p in info.skipped.reasons} == {"corrupt.mp4", "empty.avi"}
    assert len(val_labels) + 2 * len(train_clips) >= 9 - 1   # the training set drops a partial batch
    x, _ = train_clips[0]
    assert x.shape == (2, 4, 16, 16, 3) and x.dtype == np.float32
    for x, y in train_clips:   # the class is the colour channel set to 200
        assert (np.argmax(x.mean(axis=(1, 2, 3)), axis=1) == y).all()
    assert len(list(cache.glob("*.npy"))) == 9 and len(list(cache.glob("*.bad"))) == 2

    def no_decoding(path, params):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(video, "decode_video", no_decoding)
    train_again, val_again, info_again = make_datasets(config)
    with pytest.warns(SkippedVideoWarning):
        again = np.concatenate([y for _, y in val_again.as_numpy_iterator()])
        assert len(list(train_again.as_numpy_iterator())) == len(train_clips)
    np.testing.assert_array_equal(again, val_labels)
    assert info_again.skipped.reasons == info.skipped.reasons


def test_folder_with_train_and_val_subfolders(tmp_path):
    make_class_folder(tmp_path / "train", per_class=2)
    make_class_folder(tmp_path / "val", per_class=1)
    train, val, info = make_datasets(DataConfig(source="folder", path=str(tmp_path), frames=2,
                                                resolution=16, batch_size=2, parallel_calls=2))
    assert (info.num_train, info.num_val) == (6, 3)
    assert sorted(np.concatenate([y for _, y in val.as_numpy_iterator()]).tolist()) == [0, 1, 2]


def test_csv_source_and_unknown_label(tmp_path):
    root = make_class_folder(tmp_path / "videos", per_class=2)
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(root.rglob("*.*"))]
    (tmp_path / "train.csv").write_text("path,label\n" + "\n".join(rows[::2] + rows[1::2][:1]) + "\n")
    (tmp_path / "val.csv").write_text("\n".join(rows[1::2]) + "\n")
    config = DataConfig(source="csv", path=str(tmp_path / "train.csv"), val_path=str(tmp_path / "val.csv"),
                        frames=2, resolution=16, batch_size=2, parallel_calls=2)
    train, val, info = make_datasets(config)
    assert info.class_names == ["jump", "run", "walk"] and (info.num_train, info.num_val) == (4, 3)
    assert len(list(val.as_numpy_iterator())) == 2
    (tmp_path / "val.csv").write_text(rows[1] + "\nvideos/x.mp4,swim\n")
    with pytest.raises(DataError, match=r"val.csv:2: unknown label 'swim'"):
        make_datasets(config)


def test_label_csv_empty_label_is_an_error_and_a_one_row_label_beside_common_ones_a_warning(tmp_path):
    csv_path = tmp_path / "train.csv"
    labels = ["running", "running", "running", "jumping", "jumping", "runing"]
    csv_path.write_text("path,label\n" + "".join(f"v{i}.mp4,{label}\n" for i, label in enumerate(labels)))
    with pytest.warns(LabelWarning) as caught:
        _, names = video.read_label_csv(csv_path)
    assert [str(w.message) for w in caught] == [
        f"{csv_path}:7: label 'runing' labels this row only; a misspelling of 'running'?"]
    assert names == ["jumping", "runing", "running"]   # still a class: the warning leaves the choice to the user
    csv_path.write_text("v0.mp4,left\nv1.mp4,right\nv2.mp4,up\nv3.mp4,up\n")   # small classes alike: no typo
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert video.read_label_csv(csv_path)[1] == ["left", "right", "up"]
    csv_path.write_text("v0.mp4,left\nv1.mp4, \nv2.mp4,right\n")
    with pytest.raises(DataError, match=r"train.csv:2: empty label for 'v1.mp4'$"):
        video.read_label_csv(csv_path)


# --- TFRecords ---------------------------------------------------------------------------------

def write_kinetics_records(path: Path, labels, frames=9, label_texts=None):
    examples = []
    for i, label in enumerate(labels):
        clip = counting_frames(frames, 20, 28)
        clip[..., 2] = 40 * label
        examples.append(tfrecord.make_sequence_example(clip, label, label_texts and label_texts[label]))
    return tfrecord.write_tfrecord(path, examples)


def test_tfrecord_source_kinetics_layout(tmp_path):
    names = ["a", "b", "c"]
    write_kinetics_records(tmp_path / "train" / "part-0.tfrecord", [0, 1, 2, 0], label_texts=names)
    write_kinetics_records(tmp_path / "train" / "part-1.tfrecord", [1, 2], label_texts=names)
    write_kinetics_records(tmp_path / "val.tfrecord", [2, 0, 1], label_texts=names)
    config = DataConfig(source="tfrecord", path=str(tmp_path / "train"), val_path=str(tmp_path / "val.tfrecord"),
                        frames=3, stride=3, resolution=16, batch_size=2, parallel_calls=2, min_image_size=20)
    train, val, info = make_datasets(config)
    assert (info.num_train, info.num_val, info.class_names) == (6, 3, names)
    clips, labels = zip(*val.as_numpy_iterator())
    clips, labels = np.concatenate(clips), np.concatenate(labels)
    assert labels.tolist() == [2, 0, 1]
    # The centre clip of 9 frames at stride 3 is frames 1, 4, 7; the blue channel is the label.
    levels = clips[..., 0].mean(axis=(2, 3)) * 255 / 8
    np.testing.assert_allclose(levels, [[1, 4, 7]] * 3, atol=0.5)
    np.testing.assert_allclose(clips[..., 2].mean(axis=(1, 2, 3)) * 255, 40 * labels, atol=3)
    assert sum(len(y) for _, y in train.as_numpy_iterator()) == 6


def test_empty_tfrecord_is_an_error(tmp_path):
    tfrecord.write_tfrecord(tmp_path / "train.tfrecord", [])
    write_kinetics_records(tmp_path / "val.tfrecord", [0, 1])
    with pytest.raises(DataError, match="empty TFRecord"):
        make_datasets(DataConfig(source="tfrecord", path=str(tmp_path / "train.tfrecord"),
                                 val_path=str(tmp_path / "val.tfrecord")))


# --- bad input ---------------------------------------------------------------------------------

def test_bad_inputs_raise_one_line_data_errors(tmp_path):
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    (tmp_path / "empty" / "class_a" / "readme.txt").write_text("no videos here")
    write_video(tmp_path / "single" / "only" / "clip.avi", counting_frames(4))
    cases = [
        (dict(source="folder", path=str(tmp_path / "empty")), "no video files"),
        (dict(source="folder", path=str(tmp_path / "single")), "only one class"),
        (dict(source="folder", path=str(tmp_path / "missing")), "no such folder"),
        (dict(source="synthetic", batch_size=64, train_clips=32), "batch_size=64 is larger than the 32"),
        (dict(source="webcam"), "source='webcam'"),
        (dict(source="csv", path=str(tmp_path / "x.csv"), val_path=str(tmp_path / "x.csv")), "no such CSV"),
        (dict(source="tfrecord", path=str(tmp_path / "none*.tfrecord"), val_path="v"), "no TFRecord files"),
        (dict(frames=0), "frames=0"),
    ]
    for settings, message in cases:
        with pytest.raises(DataError, match=message) as caught:
            make_datasets(DataConfig(**settings))
        assert "\n" not in str(caught.value)
    assert issubclass(DataError, ValueError)
