"""Where a TF Lite A0 stream frame spends its time: single ops float32 against int8, and the classifier.

    python benchmarks/tflite_parts.py [--threads 2] [--official-python .official-env/bin/python]

1. 20 layers in a row of one op on an 86x86x24 activation (A0's first block), float32 and int8,
   each through XNNPACK: microseconds per layer for a 1x1 convolution and a 3x3 depthwise one.
2. The A0 stream float32 file (states inside, random weights, seeded) with its 600 classes and
   with 10: the difference is the time of the 2048x600 classifier, whose weights are read each frame.
3. Per op: every op of that float32 file, and of the official TF Lite export when its environment is
   given, cut out into a one-op model and timed alone; totals by op type side by side. The Python
   LiteRT wheel has no per-op profiler. An op timed alone finds its operands in cache, so the sums
   fall short of a whole frame (which also reads 15 MB of weights from memory and runs the state
   variables); ops of the same shapes compare fairly.
4. Memory: how fast one core reads arrays of 1 to 192 MB (NumPy max): where the rate falls is the
   cache this host gives a process, against which a file's weights read each frame weigh.

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


# Ops that hold or move resource handles (state variables): they cannot run cut out of their graph.
RESOURCE_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}


def op_times(path: Path, threads: int, signature: str | None = None) -> list[tuple[str, float]]:
    """(op type, fastest microseconds) of every op of ``signature``'s subgraph (default: the first
    signature's), each cut out into a model of its own: its non-constant inputs become the model's
    inputs (random values), its outputs the model's outputs."""
    from ai_edge_litert.interpreter import Interpreter

    from movinet.export import builtin_code, flatbuffer_tools

    schema, flatbuffer_utils = flatbuffer_tools()
    model = flatbuffer_utils.read_model(str(path))
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    signatures = {s.signatureKey.decode(): s.subgraphIndex for s in model.signatureDefs}
    graph = model.subgraphs[signatures[signature] if signature else next(iter(signatures.values()), 0)]
    subgraphs, signature_defs = model.subgraphs, model.signatureDefs
    rng = np.random.default_rng(0)

    def constant(index):
        buffer = model.buffers[graph.tensors[index].buffer]
        return buffer.data is not None and len(buffer.data) > 0

    times = []
    with tempfile.TemporaryDirectory(prefix="tflite-op-") as folder:
        one = Path(folder) / "one.tflite"
        for op in graph.operators:
            code = builtin_code(model.operatorCodes[op.opcodeIndex])
            name = names.get(code, str(code))
            inputs = [index for index in op.inputs if index >= 0]
            if name in RESOURCE_OPS or any(graph.tensors[i].type == schema.TensorType.RESOURCE for i in inputs):
                continue
            cut = schema.SubGraphT()
            cut.tensors, cut.operators, cut.name = graph.tensors, [op], b"one"
            cut.inputs = [index for index in inputs if not constant(index)]
            cut.outputs = list(op.outputs)
            model.subgraphs, model.signatureDefs = [cut], []
            flatbuffer_utils.write_model(model, str(one))
            model.subgraphs, model.signatureDefs = subgraphs, signature_defs
            interpreter = Interpreter(model_path=str(one), num_threads=threads)
            interpreter.allocate_tensors()
            for detail in interpreter.get_input_details():
                if detail["dtype"] == np.float32:
                    value = rng.random(detail["shape"], dtype=np.float32)
                else:
                    value = np.ones(detail["shape"], detail["dtype"])
                interpreter.set_tensor(detail["index"], value)
            times.append((name, fastest({name: interpreter.invoke}, rounds=15, repeats=30)[name] * 1e6))
    return times


def per_op(threads: int, official_python: str | None) -> None:
    import collections

    import keras

    import movinet
    from bench import official_tflite
    from movinet import export

    with tempfile.TemporaryDirectory(prefix="tflite-parts-") as folder:
        keras.utils.set_random_seed(0)
        files = {"ours": export.export_tflite(movinet.build_model("a0", "stream"), Path(folder) / "ours.tflite",
                                              resolution=172)}
        if official_python and official_tflite(official_python, Path(folder) / "official.tflite"):
            files["official"] = Path(folder) / "official.tflite"
        totals = {}
        for name, path in files.items():
            totals[name] = collections.defaultdict(lambda: [0, 0.0])
            for op, microseconds in op_times(path, threads):
                totals[name][op][0] += 1
                totals[name][op][1] += microseconds
    ops = sorted({op for table in totals.values() for op in table},
                 key=lambda op: -max(table[op][1] for table in totals.values() if op in table))
    print(f"A0 stream TF Lite float32 per op, 172x172, {threads} threads, each op alone (ops, us):")
    print(f"  {'':20s}" + "".join(f"{name:>20s}" for name in totals))
    for op in [*ops, "total"]:
        cells = [(sum(c for c, _ in table.values()), sum(t for _, t in table.values())) if op == "total"
                 else table.get(op) for table in totals.values()]
        print(f"  {op:20s}" + "".join(f"{cell[0]:>9d} {cell[1]:>9.1f}" if cell else f"{'-':>20s}" for cell in cells))


def memory() -> None:
    rates = []
    for megabytes in (1, 4, 8, 12, 16, 24, 32, 64, 192):
        values = np.ones(megabytes << 18, np.float32)
        seconds = fastest({"max": values.max}, rounds=5, repeats=max(3, 800 // megabytes))["max"]
        rates.append(f"{megabytes} MB {megabytes / 1024 / seconds:.0f}")
    print("one core reading an array (NumPy max), GB/s: " + ", ".join(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--official-python", help="the official environment's python "
                        "(benchmarks/make_official_env.sh): its TF Lite export profiled beside ours")
    parser.add_argument("--only", choices=["ops", "classifier", "per-op", "memory"], help="one part")
    args = parser.parse_args()
    if args.only in (None, "ops"):
        single_ops(args.threads)
    if args.only in (None, "classifier"):
        classifier(args.threads)
    if args.only in (None, "per-op"):
        per_op(args.threads, args.official_python)
    if args.only in (None, "memory"):
        memory()


if __name__ == "__main__":
    main()
