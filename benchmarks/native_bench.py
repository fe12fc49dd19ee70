"""The native depthwise filter gradient beside TensorFlow's kernels, per op, on A0 stream training's shapes.

    python benchmarks/native_bench.py [--repeats 10]

For each shape (x [N, H, W, C], kernel, stride, padding; the spatial convolutions of the A0 stream
training step at 8x172x172, batch 8, and its temporal (kt, 1) ones over [B, T, H*W, C]) it prints
the median milliseconds of TF's kernel with explicit padding (Eigen), TF's with 'SAME' (oneDNN,
where it is on and the padding is 'SAME'), and ``movinet.native.depthwise_filter_gradient``, then
each one's largest error against TF's kernel in float64, relative to the largest gradient.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

# (x shape, kernel, stride, padding): 'SAME' or the temporal convs' causal front padding.
SHAPES = [((64, 86, 86, 24), (5, 5), 2, "SAME"), ((64, 43, 43, 80), (3, 3), 2, "SAME"),
          ((64, 22, 22, 80), (3, 3), 1, "SAME"), ((64, 22, 22, 184), (3, 3), 2, "SAME"),
          ((64, 11, 11, 184), (3, 3), 1, "SAME"), ((64, 11, 11, 384), (3, 3), 2, "SAME"),
          ((64, 6, 6, 280), (5, 5), 1, "SAME"), ((8, 8, 484, 80), (3, 1), 1, 2), ((8, 8, 121, 184), (5, 1), 1, 4),
          ((8, 8, 36, 384), (5, 1), 1, 4)]


def median_ms(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import tensorflow as tf

    from movinet import native
    from movinet.ops import same_padding

    if not native.enabled():
        raise SystemExit("the native kernels are not available here (see the warning above)")
    print(f"{'x, kernel, stride':<34} {'TF explicit':>11} {'TF SAME':>8} {'native':>8}   "
          "error vs float64 (TF / native)")
    for shape, kernel_size, stride, padding in SHAPES:
        rng = np.random.default_rng(0)
        x = tf.constant(rng.normal(size=shape), tf.float32)
        if padding == "SAME":
            paddings = same_padding(shape[1], shape[2], *kernel_size, stride, stride)
        else:
            paddings = [[0, 0], [padding, 0], [0, 0], [0, 0]]
        strides = [1, stride, stride, 1]
        kernel_shape = [*kernel_size, shape[-1], 1]
        y = tf.nn.depthwise_conv2d(x, tf.zeros(kernel_shape), strides, paddings)
        upstream = tf.constant(rng.normal(size=y.shape), tf.float32)

        def tf_kernel(x=x, upstream=upstream, padding="EXPLICIT"):
            explicit = sum(paddings, []) if padding == "EXPLICIT" else []
            return tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
                input=x, filter_sizes=kernel_shape, out_backprop=upstream, strides=strides, padding=padding,
                explicit_paddings=explicit)

        ours = lambda: native.depthwise_filter_gradient(x, upstream, kernel_size, strides, paddings)  # noqa: E731
        expected = tf_kernel(tf.cast(x, tf.float64), tf.cast(upstream, tf.float64)).numpy()
        scale = np.abs(expected).max()
        errors = [np.abs(fn().numpy() - expected).max() / scale for fn in (tf_kernel, ours)]
        same = f"{median_ms(lambda: tf_kernel(padding='SAME').numpy(), args.repeats):8.2f}" if padding == "SAME" \
            else f"{'':>8}"
        label = f"{'x'.join(map(str, shape))}, {kernel_size[0]}x{kernel_size[1]}, {stride}"
        print(f"{label:<34} {median_ms(lambda: tf_kernel().numpy(), args.repeats):11.2f} {same} "
              f"{median_ms(lambda: ours().numpy(), args.repeats):8.2f}   {errors[0]:.1e} / {errors[1]:.1e}",
              flush=True)


if __name__ == "__main__":
    main()
