"""Running a MoViNet on a video frame by frame: stream runners for Keras and TF Lite models.

A runner carries a stream model's states from one frame to the next: ``KerasStreamRunner`` steps
a batch-norm-folded Keras model whose states live in variables, ``TFLiteStreamRunner`` an exported
flatbuffer (``movinet.export``), ``movinet.pipeline.PipelinedStreamRunner`` a Keras model cut into
stages on their own threads. ``running_logits`` streams frames through any of them,
``seconds_per_frame`` times one step.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import tensorflow as tf

from movinet import native
from movinet.model import fold_batch_norm
from movinet.ops import depthwise_as_taps


class ExportError(ValueError):
    """A model or setting that cannot be exported or run as asked; the message says which and why."""


def height_width(resolution) -> tuple[int | None, int | None]:
    """``resolution`` as (height, width): None (dynamic), one int (square) or a pair."""
    if resolution is None:
        return None, None
    if isinstance(resolution, (int, np.integer)):
        resolution = (resolution, resolution)
    height, width = (int(d) for d in resolution)
    if height < 1 or width < 1:
        raise ExportError(f"resolution={resolution!r}: expected positive sizes")
    return height, width


def xla_function(fn, *input_signature):
    """``fn`` traced for ``input_signature`` (TensorSpecs or tensors) and compiled by XLA at its
    first call, its depthwise convolutions as fused taps (``movinet.ops.depthwise_as_taps``).

    E.g. ``xla_function(lambda clip: fold_batch_norm(model)(clip, training=False), clip)`` for a
    base model: XLA's own depthwise convolution is a slow loop on CPU, the taps fuse.
    """
    with depthwise_as_taps(), native.disabled():
        return tf.function(fn, jit_compile=True).get_concrete_function(*input_signature)


def stateful_step(apply: Callable, zeros: Mapping[str, tf.Tensor], input_spec: tf.TensorSpec,
                  jit_compile: bool = False) -> tuple[Callable, dict[str, tf.Variable]]:
    """A traced step ``x -> y`` of ``apply(x, states) -> (y, new_states)`` whose states live in
    variables (made from ``zeros``) that the step reads and assigns.

    A call then passes one tensor in and one out: handing ~40 state tensors through tf.function's
    argument matching costs ~1-2 ms a frame in Python. ``jit_compile``: compiled by XLA
    (``xla_function``).

    Returns:
      (the concrete function, the state variables by name).
    """
    states = {name: tf.Variable(value, trainable=False, name=name) for name, value in zeros.items()}

    def advance(x):
        y, new_states = apply(x, {name: state.read_value() for name, state in states.items()})
        for name, value in new_states.items():
            states[name].assign(value)
        return y

    step = (xla_function(advance, input_spec) if jit_compile
            else tf.function(advance).get_concrete_function(input_spec))
    return step, states


class KerasStreamRunner:
    """Runs a Keras stream model one frame at a time, carrying its states (as TFLiteStreamRunner).

    The runner steps a batch-norm-folded copy of ``model`` (same outputs, fewer ops per frame);
    later changes to ``model``'s weights need a new runner. The states live in variables that
    the traced step reads and assigns (``stateful_step``): a call passes one frame in and the
    logits out.

    ``jit_compile=True`` compiles the step with XLA into one executable, its depthwise convolutions
    as fused taps (``movinet.ops.depthwise_as_taps``): no per-op dispatch, element-wise chains
    fused (less time a frame on CPU: ``benchmarks/bench.py``), at the price of a compilation of
    several seconds before the first step; worth it from a few hundred frames on.
    """

    def __init__(self, model, resolution, jit_compile: bool = False):
        if model.mode != "stream":
            raise ValueError(f"{model.name} is a base model; only a stream model runs frame by frame")
        self.model = fold_batch_norm(model)
        height, width = height_width(resolution)
        self.image_shape = (1, 1, height, width, 3)
        self._zeros = self.model.init_states(self.image_shape)
        self._step, self._states = stateful_step(self._logits, self._zeros,
                                                 tf.TensorSpec(self.image_shape, tf.float32), jit_compile)

    def _logits(self, image, states):
        return self.model({**states, "image": image}, training=False)

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


def _interpreter(path, num_threads: int | None, **options):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path), num_threads=num_threads, **options)


def tflite_ops(path) -> tuple[Counter, Counter]:
    """(every op, the ops XNNPACK leaves out) of a TF Lite file's first signature, counted by type.

    An op XNNPACK (the CPU delegate) leaves out runs in the interpreter's own kernel on one thread
    and cuts the graph into one more delegate partition: in an int8 file, often the slowest ops.
    """
    # One delegate node per op: a delegated op's node has the outputs of the op it replaced.
    interpreter = _interpreter(path, 1, experimental_disable_delegate_node_fusion=True)
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()  # noqa: SLF001 (the interpreter's only per-op listing)
    delegated = {tuple(node["outputs"]) for node in nodes if node["op_name"] == "DELEGATE"}
    ops = [node for node in nodes if node["op_name"] != "DELEGATE"]
    return (Counter(node["op_name"] for node in ops),
            Counter(node["op_name"] for node in ops if tuple(node["outputs"]) not in delegated))


class TFLiteStreamRunner:
    """Runs an exported TF Lite MoViNet, addressing every tensor by signature name.

    A stream model carries its states between ``step`` calls; ``init_states`` starts a new
    video. A file that keeps its states (``export_tflite(states="inside")``) zeroes them with its
    ``init_states`` signature and runs ``call`` on each frame; a file of the official signature
    gets its states passed in and out by name. A base model (no states) classifies one
    fixed-length clip per ``step``. Inputs and outputs are float32 (int32 frame counters), as
    ``export_tflite`` writes them in every quantization mode.
    """

    def __init__(self, path, num_threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such TF Lite file")
        try:
            interpreter = _interpreter(self.path, num_threads)
            signatures = interpreter.get_signature_list()
            self.keeps_states = {"init_states", "call"} <= set(signatures)
            self.runner = interpreter.get_signature_runner("call" if self.keeps_states else None)
            self.zero_states = interpreter.get_signature_runner("init_states") if self.keeps_states else None
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
        return self.keeps_states or bool(self.state_names)

    @property
    def num_classes(self) -> int:
        return int(self.outputs["logits"]["shape"][-1])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """[1, T, H, W, 3]: T is 1 for a stream model, the clip length for a base model."""
        return tuple(int(d) for d in self.inputs["image"]["shape"])

    def init_states(self) -> dict[str, np.ndarray]:
        """Zero states (the start of a video), also made the runner's current states; a file that
        keeps its states zeroes them inside and has none to show."""
        if self.keeps_states:
            self.zero_states(input_shape=np.array(self.image_shape, np.int32))
        self.states = {name: np.zeros(self.inputs[name]["shape"], self.inputs[name]["dtype"])
                       for name in self.state_names}
        return self.states

    def step(self, frame) -> np.ndarray:
        """Logits [classes] after ``frame`` ([H, W, 3]; for a base model the whole clip)."""
        image = np.asarray(frame, np.float32).reshape(self.image_shape)
        if self.keeps_states:
            return self.runner(image=image)["logits"].reshape(-1)
        outputs = self.runner(image=image, **self.states)
        self.states = {name: outputs[name] for name in self.state_names}
        return outputs["logits"].reshape(-1)


def running_logits(model, frames, jit_compile: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """(index of the last frame used, logits [classes]) as ``model`` sees more of ``frames``.

    Args:
      model: a MovinetClassifier, a TFLiteStreamRunner, or a stream runner with ``init_states``
        and ``step`` (a ``movinet.pipeline.PipelinedStreamRunner`` is iterated by its ``run``,
        which overlaps consecutive frames).
      frames: float32 [T, H, W, 3] in [0, 1].
      jit_compile: a Keras stream model steps through an XLA-compiled ``KerasStreamRunner``.
    Yields:
      stream models: after every frame, states carried from zero. A Keras base model: once,
      for the whole clip. A TF Lite base model takes clips of a fixed length: after each
      consecutive window (the last one padded by repeating its final frame), the mean of the
      window logits so far.
    """
    frames = np.asarray(frames, np.float32)
    if isinstance(model, TFLiteStreamRunner) and not model.streaming:
        window = model.image_shape[1]
        total = 0.0
        for count, start in enumerate(range(0, len(frames), window), start=1):
            clip = frames[start:start + window]
            clip = np.concatenate([clip, np.repeat(clip[-1:], window - len(clip), axis=0)])
            total = total + model.step(clip)
            yield min(start + window, len(frames)) - 1, total / count
        return
    runner = model
    if not hasattr(model, "step"):   # a Keras model
        if model.mode == "base":
            yield len(frames) - 1, model(frames[None], training=False).numpy()[0]
            return
        runner = KerasStreamRunner(model, frames.shape[1:3], jit_compile=jit_compile)
    runner.init_states()
    if hasattr(runner, "run"):
        yield from enumerate(runner.run(frames))
        return
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


def seconds_per_frame(model, frames, warmup: int = 1) -> float:
    """Median wall time of one streaming step of a stream model over ``frames`` [T, H, W, 3].

    ``warmup`` steps first (the first traces the Keras step and lets the interpreter allocate);
    the median, as a step that another process delayed says nothing of the model.
    """
    if isinstance(model, TFLiteStreamRunner):
        if not model.streaming:
            raise ValueError(f"{model.path} is a base model; per-frame latency needs a stream model")
        runner = model
    else:
        runner = KerasStreamRunner(model, np.shape(frames)[1:3])
    for frame in frames[:warmup]:
        runner.step(frame)
    runner.init_states()
    times = []
    for frame in frames:
        start = time.perf_counter()
        runner.step(frame)
        times.append(time.perf_counter() - start)
    return float(np.median(times))
