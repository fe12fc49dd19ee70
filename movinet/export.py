"""Export a MoViNet as a SavedModel or a TF Lite (LiteRT) flatbuffer.

Both formats follow the official export's signatures: a stream model takes every state plus
``image`` by name and returns ``logits`` plus every new state by name; a base model takes
``image`` and returns ``logits``. The SavedModel holds only variables and traced TensorFlow
graphs, so it reloads with ``tf.saved_model.load`` where this package is not installed.

TF Lite models use builtin ops only: an op without a builtin kernel fails the conversion
instead of shipping a Flex op, which the LiteRT runtime cannot run without the TF Select
library. A stream model is exported for one frame of one video per call, its states kept in
the file (resource variables: signatures ``init_states`` and ``call``, image -> logits) or, with
``states="outside"``, passed in and out by name as the official export does. int8 post-training
quantization is calibrated on the inputs the model really sees while streaming (frames with
their carried states), as the official ``quantize_movinet.py`` does. The pool states are
running means, so they stay bounded over long videos and survive one scale per tensor. int8
converts the batch-norm-folded copy of a model (``movinet.fold_batch_norm``).
``movinet.runners`` runs the exports (``TFLiteStreamRunner``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf

from movinet.model import MovinetClassifier, fold_batch_norm
from movinet.ops import int8_graph
from movinet.runners import ExportError, KerasStreamRunner, clip_logits, height_width

QUANTIZATIONS = (None, "float16", "int8")
# Where a stream TF Lite file keeps its states: "inside" (resource variables; signatures `init_states`
# and `call`, image -> logits) or "outside" (the official signature: every state in and out by name).
STATE_PLACEMENTS = ("inside", "outside")
FRAME_COUNT = "frame_count"       # the one counter of a file that keeps a single model's states

# TensorFlow's int8 calibration runs the model in tf.lite.Interpreter, whose constructor warns that
# it is deprecated in favour of ai_edge_litert's: a warning about a call inside the converter,
# which no user of this package can act on (our own runs use ai_edge_litert: ``movinet.runners``).
CONVERTER_OWN_WARNING = r"\s*Warning: tf\.lite\.Interpreter is deprecated"


def image_spec(batch, frames, height, width) -> tf.TensorSpec:
    return tf.TensorSpec([batch, frames, height, width, 3], tf.float32, name="image")


def state_specs(model, batch: int | None, height: int | None, width: int | None) -> dict[str, tf.TensorSpec]:
    """{name: TensorSpec} of the stream states; sizes that follow a dynamic dimension are None.

    Which dimensions follow the batch or the resolution is read off the state shapes at two
    different sizes, so this holds for any spec and options.
    """
    def shapes(b, h, w):
        return model.state_shapes((b, 1, h, w, 3))

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
    height, width = height_width(resolution)
    image = image_spec(batch, frames, height, width)
    if model.mode == "base":
        def serve(image):
            return {"logits": model(image, training=False)}

        return {"serving_default": tf.function(serve).get_concrete_function(image)}

    def call(inputs):
        logits, states = model(inputs, training=False)
        return {**states, "logits": logits}

    def init_states(input_shape):
        return model.init_states([input_shape[0], 1, input_shape[2], input_shape[3], 3])

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


def stateful_functions(model, height: int, width: int) -> tuple[dict, tf.Module]:
    """The signatures of a stream model whose states live in variables, for a TF Lite file that keeps
    them, and the module tracking weights and state variables:

    - ``init_states``: input_shape (int32 [5], the video's [1, T, H, W, 3], as the official
      signature of that name takes it) -> {frame_count: [0]}; sets every state to zero, the start
      of a video;
    - ``call``: image [1, 1, H, W, 3] -> {logits}; one frame, the states carried inside.

    A stream step then moves no state through its caller (the official signature passes every
    state in and out by name each frame). A single model's frame counters always agree, so one
    counter stands for all of them and the graph computes each frame's count once.
    """
    specs = state_specs(model, 1, height, width)
    counters = [name for name in specs if name.endswith("_frame_count")] if isinstance(model, MovinetClassifier) else []
    holder = _variables_holder(model)
    holder.states = {name: tf.Variable(tf.zeros(spec.shape, spec.dtype), trainable=False, name=name)
                     for name, spec in specs.items() if name not in counters}
    if counters:
        holder.states[FRAME_COUNT] = tf.Variable(tf.zeros([1], tf.int32), trainable=False, name=FRAME_COUNT)

    def call(image):
        states = {name: variable.read_value() for name, variable in holder.states.items()}
        if counters:
            states.update(dict.fromkeys(counters, states.pop(FRAME_COUNT)))
        logits, new_states = model({**states, "image": image}, training=False)
        if counters:
            new_states[FRAME_COUNT] = new_states[counters[0]]
        for name, variable in holder.states.items():
            variable.assign(new_states[name])
        return {"logits": logits}

    def init_states(input_shape):
        del input_shape    # one size per file; the input mirrors the official signature
        for variable in holder.states.values():
            # Zeros that depend on the variables: constant zeros would be stored in the file again.
            variable.assign(variable.read_value() * tf.zeros([], variable.dtype))
        return {FRAME_COUNT: tf.zeros([1], tf.int32)}

    return {"call": tf.function(call).get_concrete_function(image_spec(1, 1, height, width)),
            "init_states": tf.function(init_states).get_concrete_function(
                tf.TensorSpec([5], tf.int32, name="input_shape"))}, holder


def stateful_calibration(clips, height: int, width: int) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(signature, inputs) samples of a TF Lite file keeping its states, streaming ``clips``: the
    converter calibrates in one interpreter, whose variables carry the states from frame to frame."""
    for clip in clips:
        yield "init_states", {"input_shape": np.array([1, 1, height, width, 3], np.int32)}
        for frame in np.asarray(clip, np.float32):
            yield "call", {"image": frame[None, None]}


def export_tflite(model, path: "str | os.PathLike", *, resolution, quantization: str | None = None,
                  calibration: Iterable | None = None, frames: int | None = None,
                  states: str = "inside") -> Path:
    """Converts ``model`` to a TF Lite flatbuffer of builtin ops only.

    A stream model takes one frame [1, 1, H, W, 3] per call; a base model one clip
    [1, frames, H, W, 3]. Inputs and outputs stay float32 (int32 for frame counters) in every
    quantization mode.

    Args:
      resolution: int (square) or (height, width).
      quantization: None (float32), "float16" (weights), or "int8" (weights and activations,
        post-training, calibrated on ``calibration``).
      calibration: float32 clips [T, H, W, 3] at ``resolution`` (int8 only). A stream model
        is calibrated on the frames and carried states it meets while streaming them.
      frames: the clip length of a base model (default: its published input, ``video_input``).
      states: a stream model's: "inside" keeps them in the file (signatures ``init_states``, the
        start of a video, and ``call``, image -> logits; int8 stores them in int8; see
        ``stateful_functions``), "outside" takes and returns every state by name (one signature,
        ``serving_default``, as the official TF Lite files have it).
    Raises:
      ExportError: an unknown quantization or state placement, int8 without calibration clips,
        or a model that needs ops outside the TF Lite builtins.
    """
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization={quantization!r}: expected one of {list(QUANTIZATIONS)}")
    if states not in STATE_PLACEMENTS:
        raise ExportError(f"states={states!r}: expected one of {list(STATE_PLACEMENTS)}")
    height, width = height_width(resolution)
    if height is None:
        raise ExportError("TF Lite export needs a fixed resolution")
    if quantization == "int8" and calibration is None:
        raise ExportError("int8 quantization needs calibration clips")
    if model.mode == "stream":
        frames = 1
    elif frames is None:
        if model.video_input is None:
            raise ExportError(f"{model.name} has no published clip length; pass frames=")
        frames = model.video_input.frames
    inside = model.mode == "stream" and states == "inside"
    converted = model
    # Not an ensemble: a temporal one's members sit in IF branches, where the converter gives folded
    # constants nonzero int8 zero points that TF Lite's CONV_2D refuses.
    if quantization == "int8" and isinstance(model, MovinetClassifier):
        # hard_swish in ops XNNPACK runs on int8 tensors (off XNNPACK the int8 graph ran slower than
        # float), its 1/6 in the next layer's weights, which saves an int8 MUL per activation (states
        # kept inside may hold scaled values). Float keeps the converter's HARD_SWISH, one XNNPACK op
        # where the folded copy's would be two.
        converted = fold_batch_norm(model, scale_states=inside)
    with int8_graph() if quantization == "int8" else contextlib.nullcontext():
        if inside:
            functions, trackable = stateful_functions(converted, height, width)
        else:
            signature = "call" if model.mode == "stream" else "serving_default"
            functions = {signature: serving_functions(converted, batch=1, frames=frames,
                                                      resolution=(height, width))[signature]}
            trackable = _variables_holder(converted)
    dataset = None
    if quantization == "int8":
        clips = list(calibration)
        if inside:
            dataset = lambda: stateful_calibration(clips, height, width)  # noqa: E731
        elif model.mode == "stream":
            dataset = lambda: streaming_inputs(model, clips)  # noqa: E731
        else:
            dataset = lambda: ({"image": np.asarray(c, np.float32)[None]} for c in clips)  # noqa: E731
    try:
        flatbuffer = convert(list(functions.values()), trackable, quantization, dataset)
    except ExportError as err:
        raise ExportError(f"{model.name} ({model.mode}, quantization={quantization}): {err}") from None
    if inside:
        flatbuffer = fill_initial_values(flatbuffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    return path


def convert(functions, trackable, quantization: str | None = None, representative_dataset=None) -> bytes:
    """A TF Lite flatbuffer of ``functions`` (concrete functions, one signature each, named after
    them) in builtin ops only. Variables the functions assign stay variables of the file; int8
    stores them in int8.

    Raises:
      ExportError: naming the ops that would need TF Select (Flex), or the converter's error.
    """
    functions = [functions] if isinstance(functions, tf.types.experimental.ConcreteFunction) else list(functions)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, trackable)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.experimental_enable_resource_variables = True
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter._experimental_variable_quantization = True  # noqa: SLF001 (the converter's only switch for it)
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


def flatbuffer_tools():
    """(schema, flatbuffer_utils): TF Lite's flatbuffer object API, LiteRT's or else TensorFlow's."""
    try:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
        from tensorflow.lite.tools import flatbuffer_utils
    return schema, flatbuffer_utils


def builtin_code(operator_code) -> int:
    """The builtin operator of a flatbuffer OperatorCode (codes past 127 live in ``builtinCode``
    only, older files' in ``deprecatedBuiltinCode`` only)."""
    return max(operator_code.builtinCode, operator_code.deprecatedBuiltinCode)


def fill_initial_values(flatbuffer: bytes) -> bytes:
    """``flatbuffer`` with each variable's uniform initial value (zeros; an int8 zero point) made
    by a FILL op in the init subgraph (the one CALL_ONCE runs) instead of stored in full.

    The converter stores every initial value as a constant: a stream file keeping its states
    would carry a zero copy of them (A0: 1.2 MB float32, 0.7 MB int8) that only the first call reads.
    """
    schema, utils = flatbuffer_tools()
    model = utils.convert_bytearray_to_object(bytearray(flatbuffer))
    builtin, types = schema.BuiltinOperator, schema.TensorType
    # numpy dtypes of the tensor types an initial value may have, and FILL's op version for each
    element_types = {types.FLOAT32: np.float32, types.FLOAT16: np.float16, types.INT32: np.int32,
                     types.INT64: np.int64, types.INT16: np.int16, types.INT8: np.int8}
    fill_versions = {types.FLOAT16: 4, types.INT16: 3, types.INT8: 3}

    def code(op):
        return builtin_code(model.operatorCodes[op.opcodeIndex])

    def opcode_index(value_type):
        version = fill_versions.get(value_type, 1)
        for index, found in enumerate(model.operatorCodes):
            if builtin_code(found) == builtin.FILL and found.version == version:
                return index
        found = schema.OperatorCodeT()
        found.builtinCode, found.deprecatedBuiltinCode, found.version = builtin.FILL, builtin.FILL, version
        model.operatorCodes.append(found)
        return len(model.operatorCodes) - 1

    def constant(graph, values, tensor_type, name):
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(values.tobytes(), np.uint8)
        model.buffers.append(buffer)
        tensor = schema.TensorT()
        tensor.shape, tensor.type, tensor.name = np.array(values.shape, np.int32), tensor_type, name
        tensor.buffer = len(model.buffers) - 1
        graph.tensors.append(tensor)
        return len(graph.tensors) - 1

    users = Counter(tensor.buffer for graph in model.subgraphs for tensor in graph.tensors)
    freed = Counter()
    inits = {op.builtinOptions.initSubgraphIndex for graph in model.subgraphs for op in graph.operators
             if code(op) == builtin.CALL_ONCE}
    for graph in (model.subgraphs[index] for index in sorted(inits)):
        operators, filled = [], set()
        for op in graph.operators:
            value = op.inputs[1] if code(op) == builtin.ASSIGN_VARIABLE else -1
            tensor = graph.tensors[value] if value >= 0 and value not in filled else None
            data = model.buffers[tensor.buffer].data if tensor is not None and tensor.buffer else None
            dtype = element_types.get(tensor.type) if tensor is not None else None
            if data is not None and dtype is not None and len(data):
                elements = np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype)
                if np.all(elements == elements[0]):
                    dims = constant(graph, np.array(tensor.shape, np.int32), types.INT32, tensor.name + b"/fill_dims")
                    scalar = constant(graph, elements[:1].reshape(()), tensor.type, tensor.name + b"/fill_value")
                    graph.tensors[scalar].quantization = tensor.quantization
                    fill = schema.OperatorT()
                    fill.opcodeIndex, fill.inputs, fill.outputs = opcode_index(tensor.type), [dims, scalar], [value]
                    operators.append(fill)
                    freed[tensor.buffer] += 1
                    tensor.buffer = 0           # buffer 0: none, the tensor is computed
                    filled.add(value)
            operators.append(op)
        graph.operators = operators
    for buffer, count in freed.items():
        if count == users[buffer]:
            model.buffers[buffer].data = None
    return bytes(utils.convert_object_to_bytearray(model))


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
