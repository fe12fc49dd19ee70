"""Where a TF Lite A0 stream frame spends its time: single ops float32 against int8, and the classifier.

    python benchmarks/tflite_parts.py [--threads 2]

1. 20 layers in a row of one op on an 86x86x24 activation (A0's first block), float32 and int8,
   each through XNNPACK: microseconds per layer for a 1x1 convolution and a 3x3 depthwise one.
2. The A0 stream float32 file (states inside, random weights, seeded) with its 600 classes and
   with 10: the difference is the time of the 2048x600 classifier, whose weights are read each frame.

Files are timed in turns in one process (rounds of 10 calls, the fastest round kept).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = [1, 86, 86, 24]
LAYERS = 20


def fastest(calls: dict, rounds: int = 21, repeats: int = 10) -> dict[str, float]:
    """Seconds per call of each function, its fastest round, measured in turns."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            call()
            start = time.perf_counter()
            for _ in range(repeats):
                call()
            times[name].append((time.perf_counter() - start) / repeats)
    return {name: min(values) for name, values in times.items()}


def op_model(op: str, layers: int, int8: bool) -> bytes:
    """A flatbuffer of ``layers`` of ``op`` ("pointwise" or "depthwise") on an 86x86x24 input."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernels = [rng.normal(0, 0.2, (1, 1, 24, 24) if op == "pointwise" else (3, 3, 24, 1)).astype(np.float32)
               for _ in range(layers)]

    @tf.function(input_signature=[tf.TensorSpec(SHAPE, tf.float32)])
    def layers_of(x):
        for kernel in kernels:
            if op == "pointwise":
                x = tf.nn.relu6(tf.nn.conv2d(x, kernel, 1, "SAME"))
            else:
                x = tf.nn.relu6(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME"))
        return x

    converter = tf.lite.TFLiteConverter.from_concrete_functions([layers_of.get_concrete_function()])
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.random(SHAPE, dtype=np.float32)] for _ in range(8))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def single_ops(threads: int) -> None:
    from ai_edge_litert.interpreter import Interpreter

    calls = {}
    for op in ("pointwise", "depthwise"):
        for int8 in (False, True):
            for layers in (1, LAYERS + 1):
                interpreter = Interpreter(model_content=op_model(op, layers, int8), num_threads=threads)
                interpreter.allocate_tensors()
                calls[(op, int8, layers)] = interpreter.invoke
    seconds = fastest(calls)
    for op in ("pointwise", "depthwise"):
        per_layer = {int8: (seconds[(op, int8, LAYERS + 1)] - seconds[(op, int8, 1)]) / LAYERS * 1e6
                     for int8 in (False, True)}
        print(f"{op} 86x86x24 layer, {threads} threads: float32 {per_layer[False]:.1f} us, "
              f"int8 {per_layer[True]:.1f} us ({per_layer[True] / per_layer[False]:.2f}x)")


def classifier(threads: int) -> None:
    import keras

    import movinet
    from movinet import export
    from movinet.runners import TFLiteStreamRunner

    frame = np.random.default_rng(0).random((172, 172, 3), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="tflite-parts-") as folder:
        runners = {}
        for classes in (600, 10):
            keras.utils.set_random_seed(0)
            model = movinet.build_model("a0", "stream", num_classes=classes)
            path = export.export_tflite(model, Path(folder) / f"a0_{classes}.tflite", resolution=172)
            runners[classes] = TFLiteStreamRunner(path, num_threads=threads)
        seconds = fastest({classes: (lambda runner=runner: runner.step(frame)) for classes, runner in runners.items()})
    print(f"A0 stream TF Lite float32, 172x172, {threads} threads: 600 classes {seconds[600] * 1e3:.2f} ms, "
          f"10 classes {seconds[10] * 1e3:.2f} ms: the 2048x600 classifier {(seconds[600] - seconds[10]) * 1e3:.2f} ms "
          "a frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    single_ops(args.threads)
    classifier(args.threads)


if __name__ == "__main__":
    main()
