"""The A0 stream step's matrix products alone: XLA's time for them against NumPy's, side by side.

    python benchmarks/xla_dots_bench.py [--threads 1] [--repeats 30]

Collects every MatMul of the one-frame step that ``movinet.runners.KerasStreamRunner`` traces (the
1x1 convolutions and the classifier head, with their static shapes), then times the same products,
each with its own weights, as one XLA executable and as NumPy matmuls. The ratio says how much of
the XLA runner's time a frame (``bench.py --only stream``) its dots take, and what a faster matrix
kernel for these small shapes could save.
"""

from __future__ import annotations

import argparse
import statistics
import time


def step_matmul_shapes() -> list[tuple[int, int, int]]:
    """(m, k, n) of every MatMul in the A0 stream runner's traced step (plain TF graph)."""
    import movinet
    from movinet import runners

    runner = runners.KerasStreamRunner(movinet.build_model("a0", "stream"), 172)
    shapes = []
    for op in runner._step.graph.get_operations():
        if op.type == "MatMul":
            (m, k), (_, n) = op.inputs[0].shape.as_list(), op.inputs[1].shape.as_list()
            shapes.append((m, k, n))
    return shapes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, help="TensorFlow's threads (default: its own)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if args.threads:
        from movinet.threads import set_threads

        set_threads(args.threads)
    import numpy as np
    import tensorflow as tf

    shapes = step_matmul_shapes()
    rng = np.random.default_rng(0)
    lhs = [rng.random((m, k), dtype=np.float32) for m, k, _ in shapes]
    rhs = [rng.random((k, n), dtype=np.float32) for _, k, n in shapes]
    weights = [tf.Variable(w) for w in rhs]

    @tf.function(jit_compile=True)
    def products(*inputs):
        return [tf.reduce_sum(tf.matmul(x, w)) for x, w in zip(inputs, weights)]

    inputs = [tf.constant(x) for x in lhs]

    def xla():
        for value in products(*inputs):
            value.numpy()

    def numpy():
        for x, w in zip(lhs, rhs):
            (x @ w).sum()

    macs = sum(m * k * n for m, k, n in shapes)
    print(f"{len(shapes)} MatMuls in the A0 stream step, {macs / 1e6:.1f} M multiply-adds")
    for name, run in (("XLA (one executable)", xla), ("NumPy", numpy)):
        for _ in range(3):
            run()
        times = []
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(args.repeats):
                run()
            times.append((time.perf_counter() - began) / args.repeats * 1000)
        ms = statistics.median(times)
        print(f"{name:<22} {ms:7.2f} ms ({2 * macs / ms / 1e6:6.1f} GFLOP/s; runs "
              + " ".join(f"{t:.2f}" for t in times) + ")")


if __name__ == "__main__":
    main()
