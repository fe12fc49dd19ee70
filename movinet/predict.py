"""Classify a video file with a MoViNet, frame by frame as it streams.

    video file -> decode (PyAV) at the model's frame rate, short side resized, centre crop,
      values in [0, 1] -> stream model: logits after every frame (states carried);
      base model: logits of the whole clip -> softmax -> top-k per step

A model is a Keras MovinetClassifier (stream or base mode) or a TF Lite file written by
``movinet.export.export_tflite``. Decoding and resampling are those of the training data
(``movinet.data.video.decode_video``), so a model sees at inference the frames it trained on.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from movinet import checkpoints
from movinet.data.video import DecodeParams, VideoError as DecodeError, decode_video
from movinet.model import build_model
from movinet.pipeline import PipelinedStreamRunner
from movinet.runners import ExportError, TFLiteStreamRunner, running_logits

DEFAULT_FPS = 5.0
SPEC_SUFFIXES = (".yaml", ".yml")
MODEL_KINDS = ("a published name (a0..a5, t0), a spec YAML file, a .tflite file or a directory written by "
               "movinet.checkpoints.save")


class VideoError(ValueError):
    """A video file that cannot be classified: missing, empty, truncated or not a video."""


class LabelError(ValueError):
    """A label map that does not fit the model."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top-k classes after ``frame`` (index at the model's frame rate) at ``time`` seconds."""

    frame: int
    time: float
    classes: tuple[int, ...]
    probabilities: tuple[float, ...]
    labels: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        names = self.labels or (None,) * len(self.classes)
        return {"frame": self.frame, "time": round(self.time, 3),
                "top_k": [{"class": c, "label": n, "probability": round(p, 6)}
                          for c, n, p in zip(self.classes, names, self.probabilities)]}

    def format(self) -> str:
        names = self.labels or tuple(str(c) for c in self.classes)
        ranked = "  ".join(f"{n} {p:.3f}" for n, p in zip(names, self.probabilities))
        return f"frame {self.frame:4d} ({self.time:6.2f} s): {ranked}"


def read_video(path: "str | os.PathLike", *, resolution: int, fps: float | None = None) -> np.ndarray:
    """float32 frames [T, resolution, resolution, 3] in [0, 1].

    Frames are resampled to ``fps`` (every source frame if None), resized so that the short
    side is ``resolution`` and centre-cropped to a square.

    Raises:
      VideoError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if path.is_dir():
        raise VideoError(f"{path}: a directory, not a video file")
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    try:
        frames = decode_video(str(path), DecodeParams(short_side=resolution, fps=fps))
    except DecodeError as err:
        raise VideoError(f"{path}: not a readable video ({err})") from None
    height, width = frames.shape[1:3]
    top, left = (height - resolution) // 2, (width - resolution) // 2
    frames = frames[:, top:top + resolution, left:left + resolution]
    return frames.astype(np.float32) / 255.0


def read_labels(path: "str | os.PathLike", num_classes: int | None = None) -> list[str]:
    """Class names, one per line (trailing blank lines ignored).

    Raises:
      LabelError: a missing file, a blank name, or a count other than ``num_classes``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise LabelError(f"{path}: cannot read label file ({err})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if "" in names:
        raise LabelError(f"{path}:{names.index('') + 1}: blank class name")
    if num_classes is not None and len(names) != num_classes:
        raise LabelError(f"{path}: {len(names)} class names for a model with {num_classes} classes")
    return names


def load_model(model: str, *, checkpoint: str | None = None, mode: str = "stream",
               num_classes: int | None = None, num_threads: int | None = None):
    """A model from its command-line name: a ``.tflite`` file, a directory written by
    ``movinet.checkpoints.save``, or a published name / spec YAML (with an optional official
    ``checkpoint``). ``num_threads``: a TF Lite interpreter's threads (default: its own choice).

    Returns:
      A TFLiteStreamRunner or a MovinetClassifier.
    """
    path = Path(model)
    if path.suffix == ".tflite":
        if checkpoint:
            raise ValueError(f"{model}: a TF Lite file holds its weights; drop --checkpoint")
        return TFLiteStreamRunner(path, num_threads)
    if path.is_dir():
        if checkpoint:
            raise ValueError(f"{model}: a saved model directory holds its weights; drop --checkpoint")
        return checkpoints.load_model(path)
    if path.is_file() and path.suffix.lower() not in SPEC_SUFFIXES:   # a video or a CSV given by mistake
        raise ValueError(f"{model}: not a model; expected {MODEL_KINDS}")
    keras_model = build_model(model, mode, num_classes=num_classes or 600)
    if checkpoint:
        checkpoints.load_weights(keras_model, checkpoint)
    else:
        warnings.warn(f"{model} has random weights (no checkpoint given)", stacklevel=2)
    return keras_model


def num_classes(model) -> int:
    """The classifier width of a Keras model (a MovinetClassifier or an ensemble) or a TFLiteStreamRunner."""
    return model.num_classes


def model_input(model, resolution: int | None, fps: float | None) -> tuple[int, float]:
    """The (resolution, fps) to feed ``model``: as given, else the model's own.

    A TF Lite model has a fixed resolution; a Keras model defaults to its published input
    (``video_input``: its spec's, an ensemble's video). The frame rate defaults to the published one, else DEFAULT_FPS.
    """
    spec_input = None if isinstance(model, TFLiteStreamRunner) else model.video_input
    if isinstance(model, TFLiteStreamRunner):
        fixed = model.image_shape[2]
        if resolution is not None and resolution != fixed:
            raise ValueError(f"{model.path} takes {fixed}x{fixed} frames, not {resolution}")
        resolution = fixed
    elif resolution is None:
        if spec_input is None:
            raise ValueError(f"{model.name} has no published resolution; pass one")
        resolution = spec_input.resolution
    if fps is None:
        fps = spec_input.fps if spec_input is not None else DEFAULT_FPS
    return int(resolution), float(fps)


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(class indices, softmax probabilities) of the ``k`` most likely classes, best first."""
    shifted = np.exp(logits - np.max(logits))
    probabilities = shifted / shifted.sum()
    order = np.argsort(-probabilities, kind="stable")[:k]
    return order, probabilities[order]


def pipelined(model, resolution: int, stages: int, jit_compile: bool) -> PipelinedStreamRunner:
    """``model`` (a Keras stream model) as ``stages`` consecutive stages on their own threads."""
    if isinstance(model, TFLiteStreamRunner) or model.mode != "stream" or not hasattr(model, "spec"):
        raise ExportError(f"stages={stages}: a pipeline splits a Keras stream model between its layers; "
                          + ("a TF Lite model runs whole" if isinstance(model, TFLiteStreamRunner)
                             else "a base model takes the clip at once" if model.mode != "stream"
                             else "an ensemble runs whole"))
    return PipelinedStreamRunner(model, resolution, stages=stages, jit_compile=jit_compile)


def predict_video(path: "str | os.PathLike", model, *, resolution: int | None = None,
                  fps: float | None = None, k: int = 5,
                  labels: Sequence[str] | None = None, jit_compile: bool = False,
                  stages: int = 1) -> Iterator[Prediction]:
    """Top-``k`` predictions of ``model`` as it streams through the video at ``path``.

    Args:
      model: a MovinetClassifier or a TFLiteStreamRunner.
      resolution, fps: the model's input (see ``model_input``).
      labels: class names, one per class.
      jit_compile: step a Keras stream model compiled by XLA (see ``movinet.runners.KerasStreamRunner``).
      stages: run a Keras stream model as a pipeline of that many stages on their own threads
        (``movinet.pipeline``).
    """
    if labels is not None and len(labels) != num_classes(model):
        raise LabelError(f"{len(labels)} class names for a model with {num_classes(model)} classes")
    resolution, fps = model_input(model, resolution, fps)
    frames = read_video(path, resolution=resolution, fps=fps)
    if stages > 1:
        model = pipelined(model, resolution, stages, jit_compile)
    for index, logits in running_logits(model, frames, jit_compile=jit_compile):
        classes, probabilities = top_k(logits, k)
        yield Prediction(index, index / fps, tuple(int(c) for c in classes),
                         tuple(float(p) for p in probabilities),
                         tuple(labels[c] for c in classes) if labels is not None else None)
