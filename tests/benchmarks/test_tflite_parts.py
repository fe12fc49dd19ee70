"""benchmarks/tflite_parts.py's per-op profile: every op of a file is timed, variable ops left out."""

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import tensorflow as tf

from movinet import export
from movinet.runners import tflite_ops

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tflite_parts.py"


def load_script():
    spec = importlib.util.spec_from_file_location("tflite_parts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_per_op_profile_times_each_op_of_a_stateful_file_but_its_variable_ops(tmp_path):
    kernel = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 4, 8)), tf.float32)
    module = tf.Module()
    module.total = tf.Variable(tf.zeros([1, 8, 8, 8]))

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 4], tf.float32, name="image")])
    def call(image):
        features = tf.nn.relu6(tf.nn.conv2d(image, kernel, 1, "SAME"))
        module.total.assign(module.total + features)
        return {"logits": tf.reduce_mean(module.total * features, axis=[1, 2])}

    path = tmp_path / "stateful.tflite"
    path.write_bytes(export.convert(call.get_concrete_function(), module))

    times = load_script().op_times(path, threads=1)

    every_op, _ = tflite_ops(path)
    expected = Counter({op: count for op, count in every_op.items()
                        if op not in {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}})
    assert Counter(op for op, _ in times) == expected
    assert {"CONV_2D", "ADD", "MUL", "MEAN"} <= set(expected)
    assert all(0 < microseconds < 1e5 for _, microseconds in times)
