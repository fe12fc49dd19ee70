"""Evaluation: top-1/top-5 on whole clips or frame by frame through a stream model, confusion matrices.

A stream model run frame by frame carries its states from one chunk of frames to the next
(``logits, states = model({**states, "image": chunk})``, zero states first) and is scored by the
logits after the last frame, which equal the whole-clip logits.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from movinet.data import DataConfig, make_datasets
from movinet.metrics import batch_counts, summarize_counts
from movinet.runfolder import restore_run_model


def clip_logits(model: keras.Model):
    """A compiled whole-clip forward pass."""
    return tf.function(lambda clips: tf.cast(model(clips, training=False), tf.float32), reduce_retracing=True)


def stream_logits(model: keras.Model, chunk_frames: int = 1):
    """A function of clips -> logits after the last frame, feeding ``chunk_frames`` frames at a time."""
    step = tf.function(lambda inputs: model(inputs, training=False), reduce_retracing=True)

    def run(clips):
        states = model.init_states(tuple(clips.shape))
        logits = None
        for start in range(0, clips.shape[1], chunk_frames):
            logits, states = step({**states, "image": clips[:, start:start + chunk_frames]})
        return tf.cast(logits, tf.float32)

    return run


def evaluate(model: keras.Model, dataset: tf.data.Dataset, num_classes: int, *,
             frame_by_frame: bool = False, chunk_frames: int = 1) -> dict:
    """top1, top5, loss and the confusion matrix (rows: true class, columns: predicted) on ``dataset``.

    Args:
      frame_by_frame: run a stream model ``chunk_frames`` frames at a time, carrying states.
    """
    if frame_by_frame and getattr(model, "mode", "base") != "stream":
        raise ValueError("frame-by-frame evaluation needs a stream model (mode='stream')")
    forward = stream_logits(model, chunk_frames) if frame_by_frame else clip_logits(model)
    totals: dict[str, float] = {}
    confusion = np.zeros([num_classes, num_classes], np.int64)
    for clips, labels in dataset:
        logits = forward(clips)
        for key, value in batch_counts(labels, logits, num_classes).items():
            totals[key] = totals.get(key, 0.0) + float(value)
        np.add.at(confusion, (labels.numpy(), np.argmax(logits.numpy(), axis=1)), 1)
    return {**summarize_counts(totals), "confusion": confusion}


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                          title: str = "") -> Path:
    """Writes the row-normalised confusion matrix as a PNG (names shown up to 40 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, float), where=rows > 0)
    size = min(4 + 0.35 * len(class_names), 24)
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046)
    if len(class_names) <= 40:
        ticks = np.arange(len(class_names))
        axes.set_xticks(ticks, class_names, rotation=90)
        axes.set_yticks(ticks, class_names)
    if len(class_names) <= 12:
        for (i, j), count in np.ndenumerate(confusion):
            axes.text(j, i, str(count), ha="center", va="center",
                      color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(textwrap.fill(title, 60), fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def evaluate_run(run_dir: str | os.PathLike, *, frame_by_frame: bool | None = None, chunk_frames: int = 1,
                 data_overrides: Mapping | None = None, output_dir: str | os.PathLike | None = None) -> dict:
    """Evaluates a training run's last checkpoint on its validation data; writes JSON and a PNG.

    Args:
      frame_by_frame: default: frame by frame for stream runs, whole clips for base runs.
      data_overrides: DataConfig fields to change (e.g. another ``val_path``, ``frames``).
      output_dir: where the results go (default ``<run_dir>/eval``).
    Returns:
      top1, top5, loss, count, the confusion matrix, and the paths written.
    """
    model, config = restore_run_model(run_dir)
    data = DataConfig.from_dict({**config["data"], **dict(data_overrides or {})})
    _, val_ds, info = make_datasets(data)
    if frame_by_frame is None:
        frame_by_frame = config["mode"] == "stream"
    result = evaluate(model, val_ds, info.num_classes, frame_by_frame=frame_by_frame, chunk_frames=chunk_frames)
    how = f"frame by frame ({chunk_frames} frame chunks)" if frame_by_frame else "whole clips"
    output = Path(output_dir or Path(run_dir) / "eval")
    name = "stream" if frame_by_frame else "clips"
    png = plot_confusion_matrix(result["confusion"], info.class_names, output / f"confusion_{name}.png",
                                f"{config['spec']['name']} {config['mode']}, {how}: top-1 {result['top1']:.3f}")
    summary = {k: v for k, v in result.items() if k != "confusion"}
    summary.update(evaluated=how, skipped_files=info.skipped_count, class_names=info.class_names,
                   confusion=result["confusion"].tolist())
    json_path = output / f"metrics_{name}.json"
    json_path.write_text(json.dumps(summary, indent=1) + "\n")
    return {**result, "confusion_png": str(png), "metrics_json": str(json_path)}
