"""Native kernels (movinet/native): exactness against float64, the TF fallback, and the glibc setting."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import movinet
from movinet import native
from movinet.ops import batch_norm_hard_swish, depthwise_conv2d, same_padding, xla_batch_norm_hard_swish

EPSILON = 1e-3


def reference(x, gamma, beta, upstream):
    """hard_swish(batch_norm(x)) and its gradients in float64 (batch statistics, biased variance)."""
    x, gamma, beta, upstream = (np.asarray(a, np.float64) for a in (x, gamma, beta, upstream))
    rows = x.shape[0]
    mean, variance = x.mean(0), x.var(0)
    inverse = 1.0 / np.sqrt(variance + EPSILON)
    normalized = (x - mean) * inverse
    z = normalized * gamma + beta
    y = z * np.clip(z + 3.0, 0.0, 6.0) / 6.0
    gradient = upstream * np.where(z <= -3.0, 0.0, np.where(z >= 3.0, 1.0, z / 3.0 + 0.5))
    dbeta, dgamma = gradient.sum(0), (gradient * normalized).sum(0)
    dx = gamma * inverse / rows * (rows * gradient - dbeta - normalized * dgamma)
    return y, mean, variance, dx, dgamma, dbeta


def run(fn, x, gamma, beta, upstream):
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        y, mean, variance = fn(x, gamma, beta, EPSILON)
        loss = tf.reduce_sum(y * upstream)
    return (y, mean, variance, *tape.gradient(loss, [x, gamma, beta]))


def inputs(rows, channels, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(offset, 2.0, (rows, channels)).astype(np.float32)
    gamma, beta = rng.normal(1.0, 0.5, channels), rng.normal(0.0, 1.0, channels)
    upstream = rng.normal(size=(rows, channels))
    return [tf.constant(a, tf.float32) for a in (x, gamma, beta, upstream)]


def relative_errors(computed, expected):
    return [float(np.abs(np.asarray(c, np.float64) - e).max() / np.abs(e).max()) for c, e in zip(computed, expected)]


@pytest.mark.parametrize("rows, channels, offset", [(3, 300, 0.0), (257, 7, 0.0), (5000, 1, 0.0),
                                                   (70001, 24, 20.0)])
def test_native_batch_norm_hard_swish_is_exact_to_float_epsilon(rows, channels, offset):
    """Outputs, batch statistics and all three gradients within a few float32 ulps of float64, for
    odd shapes (spans that do not divide the rows, one channel, more channels than a span) and a
    channel mean 10 deviations from zero, which the shifted sums keep exact."""
    assert native.enabled()
    args = inputs(rows, channels, offset=offset)
    errors = relative_errors(run(native.batch_norm_hard_swish, *args), reference(*args))
    assert max(errors) < 2e-5, errors


def test_native_and_xla_paths_agree_and_training_uses_the_native_one():
    args = inputs(4096, 40, seed=1)
    for a, b in zip(run(native.batch_norm_hard_swish, *args), run(xla_batch_norm_hard_swish, *args)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    model = movinet.build_model("a0", "stream", num_classes=3)
    clip = tf.random.uniform([1, 4, 128, 128, 3])

    def op_types():
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=True))
            return tape.gradient(loss, model.trainable_variables)

        graph = tf.function(step).get_concrete_function(clip).graph
        return {op.type for op in graph.get_operations()}

    assert {"MovinetBnHardSwish", "MovinetDepthwiseFilterGrad"} <= op_types()
    with native.disabled():
        assert not {"MovinetBnHardSwish", "MovinetDepthwiseFilterGrad"} & op_types()


# (x shape, kernel, strides, padding): odd sizes, strides that do not divide them, a 5x4 kernel,
# more channels than a span and one channel, explicit front padding (a causal temporal conv over
# [B, T, H*W, C]), 'VALID', and padding wider than the input.
DEPTHWISE_CASES = [((3, 7, 9, 5), (3, 3), 2, "SAME"), ((2, 9, 8, 3), (5, 4), 3, "SAME"),
                   ((2, 11, 13, 300), (5, 5), 2, "SAME"), ((4, 6, 6, 1), (3, 3), 1, "SAME"),
                   ((2, 8, 50, 24), (3, 1), 1, [[0, 0], [2, 0], [0, 0], [0, 0]]),
                   ((2, 5, 7, 16), (3, 3), 1, "VALID"), ((1, 2, 3, 8), (5, 5), 1, "SAME")]


def depthwise_inputs(shape, kernel_size, stride, padding, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=shape), tf.float32)
    kernel = tf.constant(rng.normal(size=(*kernel_size, shape[-1], 1)), tf.float32)
    y = tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], padding)
    return x, kernel, tf.constant(rng.normal(size=y.shape), tf.float32)


@pytest.mark.parametrize("shape, kernel_size, stride, padding", DEPTHWISE_CASES)
def test_native_depthwise_filter_gradient_matches_float64(shape, kernel_size, stride, padding):
    """Against TF's own filter gradient computed in float64, for every kind of padding and stride."""
    assert native.enabled()
    x, kernel, upstream = depthwise_inputs(shape, kernel_size, stride, padding)
    if padding == "SAME":
        paddings = same_padding(shape[1], shape[2], *kernel_size, stride, stride)
    else:
        paddings = [[0, 0]] * 4 if padding == "VALID" else padding
    strides = [1, stride, stride, 1]
    expected = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=tf.cast(x, tf.float64), filter_sizes=kernel.shape, out_backprop=tf.cast(upstream, tf.float64),
        strides=strides, padding="EXPLICIT", explicit_paddings=sum(paddings, [])).numpy()
    computed = native.depthwise_filter_gradient(x, upstream, kernel_size, strides, paddings)
    assert computed.shape == kernel.shape
    assert relative_errors([computed], [expected])[0] < 2e-6


@pytest.mark.parametrize("shape, kernel_size, stride, padding", DEPTHWISE_CASES[:1] + DEPTHWISE_CASES[4:6])
def test_training_depthwise_conv_has_tf_gradients_with_the_native_filter_gradient(shape, kernel_size, stride,
                                                                                   padding):
    """depthwise_conv2d(training=True): the plain op's output and both gradients, the native op in its graph."""
    x, kernel, upstream = depthwise_inputs(shape, kernel_size, stride, padding, seed=1)
    strides = [1, stride, stride, 1]

    def gradients(conv):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = conv(x, kernel)
            loss = tf.reduce_sum(y * upstream)
        return (y, *tape.gradient(loss, [x, kernel]))

    ours = lambda x, k: depthwise_conv2d(x, k, strides, padding, training=True)   # noqa: E731
    plain = lambda x, k: tf.nn.depthwise_conv2d(x, k, strides, padding)   # noqa: E731
    for a, b in zip(tf.function(gradients)(ours), gradients(plain)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    graph = tf.function(lambda: gradients(ours)).get_concrete_function().graph
    assert "MovinetDepthwiseFilterGrad" in {op.type for op in graph.get_operations()}


def test_disabled_by_environment_falls_back_to_tf(monkeypatch):
    monkeypatch.setenv("MOVINET_NATIVE", "0")
    assert not native.enabled()
    args = inputs(300, 5, seed=2)
    graph = tf.function(lambda *a: batch_norm_hard_swish(*a, EPSILON)).get_concrete_function(*args[:3]).graph
    types = {op.type for op in graph.get_operations()}
    assert "MovinetBnHardSwish" not in types and "FusedBatchNormV3" in types


def test_a_broken_compiler_warns_with_its_error_and_training_falls_back(tmp_path, monkeypatch):
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'fatal error: tensorflow headers went missing' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("MOVINET_NATIVE_CACHE", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="headers went missing"):
        assert not native.enabled()
    with pytest.raises(native.NativeBuildError, match="depthwise_filter_grad.cc failed"):
        native.library()
    assert not native.enabled()   # warned once, still off
    args = inputs(300, 5, seed=3)
    errors = relative_errors(run(batch_norm_hard_swish, *args), reference(*args))
    assert max(errors) < 1e-4, errors
    assert not list((tmp_path / "cache").glob("*.so*"))   # no half-written library left behind


def test_keep_freed_memory_serves_large_buffers_from_the_heap():
    """After keep_freed_memory() a 64 MiB malloc no longer gets its own mmap (glibc's mallinfo2)."""
    script = textwrap.dedent("""
        import ctypes, sys
        from movinet.allocator import keep_freed_memory

        class MallInfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in
                        ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                         "fordblks", "keepcost")]

        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype, libc.malloc.restype = MallInfo2, ctypes.c_void_p
        if sys.argv[1] == "keep":
            assert keep_freed_memory()
        else:
            assert not keep_freed_memory()
        before = libc.mallinfo2().hblkhd
        buffer = libc.malloc(64 << 20)
        print(libc.mallinfo2().hblkhd - before)
    """)
    mapped = {}
    for mode, env in (("keep", {}), ("default", {"MOVINET_KEEP_FREED_MEMORY": "0"})):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True).stdout
        mapped[mode] = int(out.split()[-1])
    assert mapped["keep"] == 0 and mapped["default"] >= 64 << 20
