"""Export a MoViNet as a SavedModel or a TF Lite (LiteRT) flatbuffer, and run the latter.

Both formats follow the official export (reference section 4): a stream model takes every
state plus ``image`` by name and returns ``logits`` plus every new state by name; a base model
takes ``image`` and returns ``logits``. The SavedModel holds only variables and traced
TensorFlow graphs, so it reloads with ``tf.saved_model.load`` where this package is not
installed.

TF Lite models use builtin ops only: an op without a builtin kernel fails the conversion
instead of shipping a Flex op the LiteRT runtime cannot run (pitfalls.md). A stream model is
exported for one frame of one video per call; int8 post-training quantization is calibrated on
the inputs the model really sees while streaming (frames with their carried states), as the
official ``quantize_movinet.py`` does. The pool states are running means, so they stay bounded
over long videos and survive one scale per tensor.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf

from movinet import native
from movinet.cost import state_shapes
from movinet.layers import depthwise_as_taps
from movinet.model import fold_batch_norm

QUANTIZATIONS = (None, "float16", "int8")

# TensorFlow's int8 calibration runs the model in tf.lite.Interpreter, whose constructor warns that
# it is deprecated in favour of ai_edge_litert's: a warning about a call inside the converter,
# which no user of this package can act on (our own runs use ai_edge_litert, ``_interpreter``).
CONVERTER_OWN_WARNING = r"\s*Warning: tf\.lite\.Interpreter is deprecated"


class ExportError(ValueError):
    """A model or setting that cannot be exported as asked; the message says which and why."""


def _height_width(resolution) -> tuple[int | None, int | None]:
    """``resolution`` as (height, width): None (dynamic), one int (square) or a pair."""
    if resolution is None:
        return None, None
    if isinstance(resolution, (int, np.integer)):
        resolution = (resolution, resolution)
    height, width = (int(d) for d in resolution)
    if height < 1 or width < 1:
        raise ExportError(f"resolution={resolution!r}: expected positive sizes")
    return height, width


def image_spec(batch, frames, height, width) -> tf.TensorSpec:
    return tf.TensorSpec([batch, frames, height, width, 3], tf.float32, name="image")


def state_specs(model, batch: int | None, height: int | None, width: int | None) -> dict[str, tf.TensorSpec]:
    """{name: TensorSpec} of the stream states; sizes that follow a dynamic dimension are None.

    Which dimensions follow the batch or the resolution is read off the state shapes at two
    different sizes, so this holds for any spec and options.
    """
    def shapes(b, h, w):
        return state_shapes(model.spec, model.options, b, h, w)

    first = shapes(batch or 2, height or 32, width or 32)
    second = shapes(batch or 3, height or 64, width or 64)
    specs = {}
    for name, (shape, dtype) in first.items():
        dims = [a if a == b else None for a, b in zip(shape, second[name][0])]
        specs[name] = tf.TensorSpec(dims, tf.as_dtype(dtype), name=name)
    return specs


def serving_functions(model, *, batch=1, frames=None, resolution=None) -> dict:
    """The concrete functions of the official signatures for ``model``.

    Returns:
      base: {"serving_default": image -> {logits}}.
      stream: {"call": {**states, image} -> {logits, **new states},
               "init_states": input_shape (int32 [B, T, H, W, 3]) -> {**zero states}}, named as in
      the official export, so TF Hub-style code runs on it unchanged.
    """
    height, width = _height_width(resolution)
    image = image_spec(batch, frames, height, width)
    if model.mode == "base":
        def serve(image):
            return {"logits": model(image, training=False)}

        return {"serving_default": tf.function(serve).get_concrete_function(image)}

    def call(inputs):
        logits, states = model(inputs, training=False)
        return {**states, "logits": logits}

    def init_states(input_shape):
        zeros = state_shapes(model.spec, model.options, input_shape[0], input_shape[2], input_shape[3])
        return {name: tf.zeros(shape, dtype) for name, (shape, dtype) in zeros.items()}

    inputs = {**state_specs(model, batch, height, width), "image": image}
    return {"call": tf.function(call).get_concrete_function(inputs),
            "init_states": tf.function(init_states).get_concrete_function(
                tf.TensorSpec([5], tf.int32, name="input_shape"))}


def _variables_holder(model) -> tf.Module:
    """A module tracking only the model's tf.Variables: no Keras object enters the export."""
    holder = tf.Module()
    holder.model_variables = [getattr(v, "value", v) for v in model.variables]
    return holder


def export_saved_model(model, path: "str | os.PathLike", *, frames=None, resolution=None,
                       batch: int | None = 1) -> Path:
    """Writes ``model`` as a SavedModel with the official signatures (see ``serving_functions``).

    Args:
      frames, resolution, batch: fixed input sizes; None leaves a dimension dynamic. A stream
        model's ``init_states`` signature is dynamic in all of them whatever these are.
    Returns:
      The SavedModel directory. A stream SavedModel also serves ``call`` as ``serving_default``.
    """
    functions = serving_functions(model, batch=batch, frames=frames, resolution=resolution)
    if "call" in functions:
        functions["serving_default"] = functions["call"]
    holder = _variables_holder(model)
    for name, function in functions.items():
        setattr(holder, name, function)
    tf.saved_model.save(holder, str(path), signatures=functions)
    return Path(path)


def xla_function(fn, *input_signature):
    """``fn`` traced for ``input_signature`` (TensorSpecs or tensors) and compiled by XLA at its
    first call, its depthwise convolutions as fused taps (``movinet.layers.depthwise_as_taps``).

    E.g. ``xla_function(lambda clip: fold_batch_norm(model)(clip, training=False), clip)`` for a
    base model: XLA's own depthwise convolution is a slow loop on CPU, the taps fuse.
    """
    with depthwise_as_taps(), native.disabled():
        return tf.function(fn, jit_compile=True).get_concrete_function(*input_signature)


class KerasStreamRunner:
    """Runs a Keras stream model one frame at a time, carrying its states (as TFLiteStreamRunner).

    The runner steps a batch-norm-folded copy of ``model`` (same outputs, fewer ops per frame);
    later changes to ``model``'s weights need a new runner. The states live in variables that
    the traced step reads and assigns, so a call passes one frame in and the logits out: handing
    ~40 state tensors through tf.function's argument matching costs ~1-2 ms a frame in Python.

    ``jit_compile=True`` compiles the step with XLA into one executable, its depthwise convolutions
    as fused taps (``movinet.layers.depthwise_as_taps``): no per-op dispatch, element-wise chains
    fused (A0 on a 2-core CPU: 20-40% less time a frame; ``results/benchmarks.md``), at the price
    of a compilation of several seconds before the first step; worth it from a few hundred frames on.
    """

    def __init__(self, model, resolution, jit_compile: bool = False):
        if model.mode != "stream":
            raise ValueError(f"{model.name} is a base model; only a stream model runs frame by frame")
        self.model = fold_batch_norm(model)
        height, width = _height_width(resolution)
        self.image_shape = (1, 1, height, width, 3)
        self._zeros = self.model.init_states(self.image_shape)
        self._states = {name: tf.Variable(value, trainable=False, name=name)
                        for name, value in self._zeros.items()}
        image = tf.TensorSpec(self.image_shape, tf.float32)
        self._step = (xla_function(self._advance, image) if jit_compile
                      else tf.function(self._advance).get_concrete_function(image))

    def _advance(self, image):
        logits, new_states = self.model({**{name: state.read_value() for name, state in self._states.items()},
                                         "image": image}, training=False)
        for name, value in new_states.items():
            self._states[name].assign(value)
        return logits

    @property
    def states(self) -> dict[str, tf.Tensor]:
        """The current states (values, not the variables: later steps do not change them)."""
        return {name: tf.identity(state) for name, state in self._states.items()}

    def init_states(self) -> dict[str, tf.Tensor]:
        """Zero states (the start of a video), also made the runner's current states."""
        for name, value in self._zeros.items():
            self._states[name].assign(value)
        return self.states

    def step(self, frame) -> np.ndarray:
        """Logits [classes] after ``frame`` ([H, W, 3] or [1, 1, H, W, 3])."""
        image = tf.constant(np.asarray(frame, np.float32).reshape(self.image_shape))
        return self._step(image).numpy()[0]


def streaming_inputs(model, clips: Iterable) -> Iterator[dict[str, np.ndarray]]:
    """{"image": frame [1, 1, H, W, 3], **states before that frame} for every frame of ``clips``.

    The inputs a one-frame stream model meets in use: ``model`` runs over each clip
    ([T, H, W, 3] in [0, 1]) frame by frame with its states carried.
    """
    runner = None
    for clip in clips:
        clip = np.asarray(clip, np.float32)
        if runner is None:
            runner = KerasStreamRunner(model, clip.shape[1:3])
        runner.init_states()
        for frame in clip:
            inputs = {name: np.asarray(value) for name, value in runner.states.items()}
            yield {"image": frame[None, None], **inputs}
            runner.step(frame)


def export_tflite(model, path: "str | os.PathLike", *, resolution, quantization: str | None = None,
                  calibration: Iterable | None = None, frames: int | None = None) -> Path:
    """Converts ``model`` to a TF Lite flatbuffer of builtin ops only.

    A stream model takes one frame [1, 1, H, W, 3] and its states per call; a base model one
    clip [1, frames, H, W, 3]. Inputs and outputs stay float32 (int32 for frame counters) in
    every quantization mode, so a runner feeds states back unchanged.

    Args:
      resolution: int (square) or (height, width).
      quantization: None (float32), "float16" (weights), or "int8" (weights and activations,
        post-training, calibrated on ``calibration``).
      calibration: float32 clips [T, H, W, 3] at ``resolution`` (int8 only). A stream model
        is calibrated on the frames and carried states it meets while streaming them.
      frames: the clip length of a base model (default: the spec's published input).
    Raises:
      ExportError: an unknown quantization, int8 without calibration clips, or a model that
        needs ops outside the TF Lite builtins.
    """
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization={quantization!r}: expected one of {list(QUANTIZATIONS)}")
    height, width = _height_width(resolution)
    if height is None:
        raise ExportError("TF Lite export needs a fixed resolution")
    if quantization == "int8" and calibration is None:
        raise ExportError("int8 quantization needs calibration clips")
    if model.mode == "stream":
        frames = 1
    elif frames is None:
        if model.spec.input is None:
            raise ExportError(f"{model.spec.name} has no published clip length; pass frames=")
        frames = model.spec.input.frames
    signature = "call" if model.mode == "stream" else "serving_default"
    function = serving_functions(model, batch=1, frames=frames, resolution=(height, width))[signature]
    dataset = None
    if quantization == "int8":
        clips = list(calibration)
        if model.mode == "stream":
            dataset = lambda: streaming_inputs(model, clips)  # noqa: E731
        else:
            dataset = lambda: ({"image": np.asarray(c, np.float32)[None]} for c in clips)  # noqa: E731
    try:
        flatbuffer = convert(function, _variables_holder(model), quantization, dataset)
    except ExportError as err:
        raise ExportError(f"{model.spec.name} ({model.mode}, quantization={quantization}): {err}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    return path


def convert(function, trackable, quantization: str | None = None, representative_dataset=None) -> bytes:
    """A TF Lite flatbuffer of ``function`` (a concrete function) in builtin ops only.

    Raises:
      ExportError: naming the ops that would need TF Select (Flex), or the converter's error.
    """
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], trackable)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=CONVERTER_OWN_WARNING, category=UserWarning)
            return converter.convert()
    except Exception as err:  # ConverterError is not public; nothing else is raised at this point
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        flex = next((line for line in lines if line.startswith("TF Select ops:")), None)
        if flex:
            raise ExportError(f"needs ops outside the TF Lite builtins ({flex}); "
                              "Flex ops are not shipped") from None
        first = next((line.split("error:", 1)[1].strip() for line in lines if "error:" in line),
                     lines[0] if lines else type(err).__name__)
        raise ExportError(f"TF Lite conversion failed: {first}") from None


def _interpreter(path: "str | os.PathLike", num_threads: int | None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path), num_threads=num_threads)


class TFLiteStreamRunner:
    """Runs an exported TF Lite MoViNet, addressing every tensor by signature name.

    A stream model carries its states between ``step`` calls; ``init_states`` starts a new
    video. A base model (no state inputs) classifies one fixed-length clip per ``step``.
    Inputs and outputs are float32 (int32 frame counters), as ``export_tflite`` writes them
    in every quantization mode.
    """

    def __init__(self, path: "str | os.PathLike", num_threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such TF Lite file")
        try:
            self.runner = _interpreter(self.path, num_threads).get_signature_runner()
        except (ValueError, RuntimeError) as err:
            raise ExportError(f"{self.path}: not a runnable TF Lite model ({err})") from None
        self.inputs = self.runner.get_input_details()
        self.outputs = self.runner.get_output_details()
        if "image" not in self.inputs or "logits" not in self.outputs:
            raise ExportError(f"{self.path}: not a MoViNet export (expected an 'image' input and a "
                              f"'logits' output, found {sorted(self.inputs)} -> {sorted(self.outputs)})")
        integer = sorted(name for name, detail in {**self.inputs, **self.outputs}.items()
                         if detail["dtype"] not in (np.float32, np.int32))
        if integer:
            raise ExportError(f"{self.path}: quantized inputs/outputs {integer[:3]} are not supported; "
                              "export with float inputs and outputs")
        self.state_names = sorted(name for name in self.inputs if name != "image")
        self.states = self.init_states()

    @property
    def streaming(self) -> bool:
        return bool(self.state_names)

    @property
    def num_classes(self) -> int:
        return int(self.outputs["logits"]["shape"][-1])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """[1, T, H, W, 3]: T is 1 for a stream model, the clip length for a base model."""
        return tuple(int(d) for d in self.inputs["image"]["shape"])

    def init_states(self) -> dict[str, np.ndarray]:
        """Zero states (the start of a video), also made the runner's current states."""
        self.states = {name: np.zeros(self.inputs[name]["shape"], self.inputs[name]["dtype"])
                       for name in self.state_names}
        return self.states

    def step(self, frame) -> np.ndarray:
        """Logits [classes] after ``frame`` ([H, W, 3]; for a base model the whole clip)."""
        image = np.asarray(frame, np.float32).reshape(self.image_shape)
        outputs = self.runner(image=image, **self.states)
        self.states = {name: outputs[name] for name in self.state_names}
        return outputs["logits"].reshape(-1)


def running_logits(model, frames, jit_compile: bool = False, stages: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(index of the last frame used, logits [classes]) as ``model`` sees more of ``frames``.

    Args:
      model: a MovinetClassifier or a TFLiteStreamRunner.
      frames: float32 [T, H, W, 3] in [0, 1].
      jit_compile: a Keras stream model steps through an XLA-compiled ``KerasStreamRunner``.
      stages: more than 1: a Keras stream model runs as that many consecutive stages on their
        own threads (``movinet.pipeline.PipelinedStreamRunner``; the same logits, more frames a second).
    Yields:
      stream models: after every frame, states carried from zero. A Keras base model: once,
      for the whole clip. A TF Lite base model takes clips of a fixed length: after each
      consecutive window (the last one padded by repeating its final frame), the mean of the
      window logits so far.
    """
    frames = np.asarray(frames, np.float32)
    if stages > 1 and (isinstance(model, TFLiteStreamRunner) or model.mode != "stream"):
        raise ExportError(f"stages={stages}: a pipeline splits a Keras stream model between its layers; "
                          + ("a TF Lite model runs whole" if isinstance(model, TFLiteStreamRunner)
                             else "a base model takes the clip at once"))
    if isinstance(model, TFLiteStreamRunner) and not model.streaming:
        window = model.image_shape[1]
        total = 0.0
        for count, start in enumerate(range(0, len(frames), window), start=1):
            clip = frames[start:start + window]
            clip = np.concatenate([clip, np.repeat(clip[-1:], window - len(clip), axis=0)])
            total = total + model.step(clip)
            yield min(start + window, len(frames)) - 1, total / count
        return
    if not isinstance(model, TFLiteStreamRunner) and model.mode == "base":
        yield len(frames) - 1, model(frames[None], training=False).numpy()[0]
        return
    if stages > 1:
        from movinet.pipeline import PipelinedStreamRunner

        pipeline = PipelinedStreamRunner(model, frames.shape[1:3], stages=stages, jit_compile=jit_compile)
        yield from enumerate(pipeline.run(frames))
        return
    runner = (model if isinstance(model, TFLiteStreamRunner)
              else KerasStreamRunner(model, frames.shape[1:3], jit_compile=jit_compile))
    runner.init_states()
    for index, frame in enumerate(frames):
        yield index, runner.step(frame)


def clip_logits(model, clip) -> np.ndarray:
    """Logits [classes] of a MovinetClassifier or a TFLiteStreamRunner after the whole ``clip``.

    A Keras model takes the clip at once (for a stream model that equals going frame by
    frame); a runner goes as ``running_logits``.
    """
    clip = np.asarray(clip, np.float32)
    if not isinstance(model, TFLiteStreamRunner):
        return model(clip[None], training=False).numpy()[0]
    for _, logits in running_logits(model, clip):
        pass
    return logits


def top1_agreement(reference, candidate, clips: Iterable) -> dict:
    """How often ``candidate`` (e.g. an int8 export) picks the top-1 class ``reference`` picks.

    Args:
      reference, candidate: MovinetClassifier or TFLiteStreamRunner.
      clips: float32 videos [T, H, W, 3] in [0, 1].
    Returns:
      {"clips": n, "agreement": fraction in [0, 1], "max_abs_diff": largest final-logit gap}.
    """
    agree, count, gap = 0, 0, 0.0
    for clip in clips:
        expected, actual = clip_logits(reference, clip), clip_logits(candidate, clip)
        agree += int(np.argmax(expected) == np.argmax(actual))
        gap = max(gap, float(np.max(np.abs(expected - actual))))
        count += 1
    if not count:
        raise ValueError("top1_agreement needs at least one clip")
    return {"clips": count, "agreement": agree / count, "max_abs_diff": gap}


def seconds_per_frame(model, frames) -> float:
    """Mean wall time of one streaming step of a stream model over ``frames`` [T, H, W, 3].

    One warm-up step first (it traces the Keras step and lets the interpreter allocate).
    """
    if isinstance(model, TFLiteStreamRunner):
        if not model.streaming:
            raise ValueError(f"{model.path} is a base model; per-frame latency needs a stream model")
        runner = model
    else:
        runner = KerasStreamRunner(model, np.shape(frames)[1:3])
    runner.step(frames[0])
    runner.init_states()
    start = time.perf_counter()
    for frame in frames:
        runner.step(frame)
    return (time.perf_counter() - start) / len(frames)
