"""A stream model as a pipeline of consecutive stages, one thread each: more frames per second.

A stream step is a chain of small ops that one core runs about as fast as two (a batch-1 step
does not split well inside an op; ``docs/performance.md``). Cut between layers instead: stage
1 (stem and the first blocks) of frame t+1 runs while stage 2 (the later blocks, head and
classifier) finishes frame t. Each stage carries only its own layers' states, so every frame
still sees exactly the states of the frames before it, and the logits are those of the whole
model stepped frame by frame (to float round-off: each stage is traced, and with XLA compiled,
on its own). A frame's latency stays about one whole step; the time between frames drops to the
slowest stage's.

    runner = PipelinedStreamRunner(model, 172, stages=2, jit_compile=True)
    for logits in runner.run(frames):   # [H, W, 3] each, in order; logits [classes] each
        ...

``python benchmarks/pipeline_bench.py`` times it beside the whole step (figures in
``docs/performance.md``). Two stages suit two cores; more stages than cores only add hand-overs.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from movinet.cost import cost as model_cost
from movinet.model import fold_batch_norm, states_by_owner
from movinet.runners import ExportError, height_width, stateful_step

# A unit's estimated time (nanoseconds on a 2-core Xeon; see ``layer_weights``).
UNIT_NS = 220_000.0        # fixed per unit: its ~20 fused loops and matrix products, its state reads and writes
ACTIVATION_NS = 2.2        # per element of its input, output and expanded features
WEIGHT_NS = 0.25           # per element of its weights and states
MAC_NS = 0.05              # per multiply-add (20 GMAC/s; what large models' stages come down to)
STEM_MAC_NS = 0.4          # per multiply-add of the stem's full convolution over 3 channels (~2.5 GMAC/s)


def layer_weights(model, height: int, width: int) -> list[float]:
    """Estimated time (ns) of each unit of the stream step: the stem, every block, then the head
    with the classifier.

    At batch 1 a unit's time is mostly fixed costs and memory traffic, not multiply-adds: the
    constants are a least-squares fit (non-negative) to A0's per-unit times at 172x172 on a
    2-core Xeon, XLA, one thread (stem 0.97 ms, block0 0.89, later blocks 0.30-0.55, head and
    classifier 0.86), with a multiply-add term the fit could not
    resolve at A0's sizes set to 20 GMAC/s, and the stem's own (its 3-channel convolution runs
    at a tenth of that; the fit missed it by 0.4 ms). ``split`` overrides the balance they give.
    """
    layers = model_cost(model.spec, frames=1, resolution=(height, width), options=model.options).layers
    expand = {block.name: block.expand_filters for block in model.blocks}
    weights, previous = [], (1, height, width, 3)
    for layer in layers:
        _, h, w, channels_in = previous
        _, ho, wo, channels_out = layer.out_shape
        activations = h * w * channels_in + ho * wo * channels_out + (h * w + ho * wo) * expand.get(layer.name, 0)
        weights.append(ACTIVATION_NS * activations + WEIGHT_NS * (layer.params + 2 * layer.state_elements)
                       + (STEM_MAC_NS if layer.name == "stem" else MAC_NS) * layer.macs)
        previous = layer.out_shape
    # The cost table lists the head and the classifier's two convolutions as three rows: one unit.
    units = 1 + len(model.blocks)
    return [UNIT_NS + weight for weight in weights[:units]] + [UNIT_NS + sum(weights[units:])]


def balanced_split(weights: Sequence[float], stages: int) -> list[int]:
    """Where each stage after the first begins (indices into ``weights``): consecutive groups
    whose sums are as close to equal as the units allow, none empty."""
    if not 1 <= stages <= len(weights):
        raise ExportError(f"stages={stages}: expected 1 to {len(weights)} (the stream step's units)")
    cumulative = np.cumsum(weights)
    total = cumulative[-1]
    starts = []
    for i in range(1, stages):
        start = int(np.argmin(np.abs(cumulative - total * i / stages))) + 1
        low = (starts[-1] if starts else 0) + 1          # after the previous stage's first unit
        high = len(weights) - (stages - i)             # leaves a unit for every later stage
        starts.append(min(max(start, low), high))
    return starts


class _Stage:
    """Consecutive units of the folded model with their states in variables; one traced step."""

    def __init__(self, model, units: Sequence[str], zeros: dict, input_spec: tf.TensorSpec, jit_compile: bool):
        self.model = model
        self.units = tuple(units)
        owners = states_by_owner(zeros)
        prefixes = [self._layer(unit).state_prefix for unit in self.units if unit.startswith("block")]
        if "head" in self.units:
            prefixes.append("state_head")
        self.zeros = {name: value for prefix in prefixes for name, value in owners.get(prefix, {}).items()}
        self.step, self.states = stateful_step(self.apply, self.zeros, input_spec, jit_compile)
        self.output_spec = tf.TensorSpec(self.step.structured_outputs.shape, self.step.structured_outputs.dtype)

    def _layer(self, name: str):
        return next(block for block in self.model.blocks if block.name == name)

    def apply(self, x, states: dict):
        """(this stage's output, its new states) for input ``x`` and its ``states`` by name."""
        own = states_by_owner(states)
        new_states = {}
        for unit in self.units:
            if unit == "stem":
                x = self.model.stem(tf.cast(x, self.model.compute_dtype), training=False)
            elif unit == "head":
                x, head_states = self.model.head(x, own.get("state_head", {}), training=False)
                new_states.update(head_states)
                x = self.model.classifier(x, training=False)
            else:
                layer = self._layer(unit)
                x, layer_states = layer(x, own.get(layer.state_prefix, {}), training=False)
                new_states.update(layer_states)
        return x, new_states

    def reset(self) -> None:
        for name, value in self.zeros.items():
            self.states[name].assign(value)


_DONE = object()


class PipelinedStreamRunner:
    """Runs a Keras stream model frame by frame as ``stages`` consecutive stages on their own threads.

    Args:
      model: a stream MovinetClassifier (a batch-norm-folded copy is stepped, as in
        ``movinet.runners.KerasStreamRunner``).
      resolution: int (square) or (height, width) of the frames.
      stages: how many consecutive parts, each on its own thread (1: no pipeline).
      jit_compile: compile each stage with XLA (a few seconds each before the first frame).
      split: where each stage after the first begins, as indices into ``units`` (the stem,
        every block, then "head", the head with the classifier); default: balanced by
        ``layer_weights``.
    """

    def __init__(self, model, resolution, stages: int = 2, jit_compile: bool = False,
                 split: Sequence[int] | None = None):
        if model.mode != "stream":
            raise ExportError(f"{model.name} is a base model; only a stream model runs frame by frame")
        height, width = height_width(resolution)
        if height is None:
            raise ExportError("a pipelined runner needs the frames' resolution")
        self.model = fold_batch_norm(model)
        self.image_shape = (1, 1, height, width, 3)
        self.units = ["stem", *(block.name for block in self.model.blocks), "head"]
        starts = list(split) if split is not None else balanced_split(
            layer_weights(self.model, height, width), stages)
        if len(starts) != stages - 1 or any(b <= a for a, b in zip([0, *starts], [*starts, len(self.units)])):
            raise ExportError(f"split={list(starts)}: expected {stages - 1} increasing indices between 1 and "
                              f"{len(self.units) - 1} (units: {self.units})")
        zeros = self.model.init_states(self.image_shape)
        spec = tf.TensorSpec(self.image_shape, tf.float32)
        self.stages = []
        for begin, end in zip([0, *starts], [*starts, len(self.units)]):
            stage = _Stage(self.model, self.units[begin:end], zeros, spec, jit_compile)
            self.stages.append(stage)
            spec = stage.output_spec
        self.split = starts

    def init_states(self) -> None:
        """Zero states (the start of a video) in every stage."""
        for stage in self.stages:
            stage.reset()

    def step(self, frame) -> np.ndarray:
        """Logits [classes] after ``frame`` ([H, W, 3] or [1, 1, H, W, 3]); the stages in turn, no threads."""
        x = self._image(frame)
        for stage in self.stages:
            x = stage.step(x)
        return x.numpy()[0]

    def run(self, frames: Iterable) -> Iterator[np.ndarray]:
        """Logits [classes] after each of ``frames`` in order, states carried from the current ones.

        Frames are read on their own thread, and every stage but the last runs on its own, each
        handing its output on through a queue of two; the last stage runs as the caller iterates.
        An error in any of them (a frame of the wrong shape, a decoder's) is raised here; closing
        the iterator early stops the threads.
        """
        stop = threading.Event()
        failures: list[BaseException] = []
        queues = [queue.Queue(maxsize=2) for _ in self.stages]

        def put(q, item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def get(q):
            while not stop.is_set():
                try:
                    return q.get(timeout=0.1)
                except queue.Empty:
                    continue
            return _DONE

        def feed():
            try:
                for frame in frames:
                    if not put(queues[0], self._image(frame)):
                        return
            except BaseException as error:   # noqa: BLE001 - handed to the caller
                failures.append(error)
            put(queues[0], _DONE)

        def work(stage, source, target):
            try:
                while (x := get(source)) is not _DONE:
                    if not put(target, stage.step(x)):
                        return
            except BaseException as error:   # noqa: BLE001 - handed to the caller
                failures.append(error)
            put(target, _DONE)

        threads = [threading.Thread(target=feed, name="movinet-frames", daemon=True)]
        threads += [threading.Thread(target=work, args=(stage, queues[i], queues[i + 1]),
                                     name=f"movinet-stage{i}", daemon=True)
                    for i, stage in enumerate(self.stages[:-1])]
        for thread in threads:
            thread.start()
        last = self.stages[-1]
        try:
            while (x := get(queues[-1])) is not _DONE:
                yield last.step(x).numpy()[0]
            if failures:
                raise failures[0]
        finally:
            stop.set()
            for thread in threads:
                thread.join()

    def _image(self, frame) -> tf.Tensor:
        frame = np.asarray(frame, np.float32)
        if frame.size != np.prod(self.image_shape):
            raise ExportError(f"frame of shape {list(frame.shape)}: the runner takes "
                              f"{list(self.image_shape[2:])} frames")
        return tf.constant(frame.reshape(self.image_shape))
