"""The functional ops under the layers: activations, depthwise convolutions, frame reshapes.

Convolutions run as 2D ops on frames ([B*T, H, W, C]) plus temporal taps: a depthwise 3D
convolution is the sum of its temporal taps' depthwise 2D convolutions, which is the same
function as a grouped Conv3D (TF 'SAME' padding per axis) and ~100x faster on CPU, where TF's
grouped Conv3D runs a slow generic loop. The training-time ops carry custom gradients: fused XLA
kernels for hard_swish and batch norm with hard_swish, and the depthwise filter gradient from the
native kernels (``movinet.native``) or TF's own kernel, whichever is faster for the shape.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import tensorflow as tf

from movinet import native
from movinet.cost import downsampled

HARD_SIGMOID_SCALE = 0.16667   # the official hard_sigmoid constant (not exactly 1/6)


def hard_swish(x):
    if _INT8_GRAPH.get():
        # Not the pattern TF Lite's converter fuses into HARD_SWISH, which XNNPACK runs in float
        # only: in an int8 graph each one fell back to the interpreter's own kernel.
        return (x * (1.0 / 6.0)) * tf.nn.relu6(x + 3.0)
    return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def _hard_swish_slope(z):
    # d/dz z*relu6(z+3)/6, with Relu6Grad's closed bounds: 0 at z <= -3, 1 at z >= 3.
    return tf.where(z <= -3.0, tf.zeros_like(z), tf.where(z >= 3.0, tf.ones_like(z), z * (1.0 / 3.0) + 0.5))


@tf.function(jit_compile=True)
def _fused_hard_swish(x):
    return hard_swish(x)


@tf.function(jit_compile=True)
def _fused_hard_swish_grad(x, upstream):
    return upstream * _hard_swish_slope(x)


@tf.custom_gradient
def training_hard_swish(x):
    """hard_swish in one pass over ``x`` each way (XLA fuses the element-wise ops), for training.

    Unfused, its 4 forward and ~6 backward element-wise ops over every expanded activation were
    about a third of an A0 stream training step on CPU. Only x is kept for the backward pass.
    """
    return _fused_hard_swish(x), lambda upstream: _fused_hard_swish_grad(x, upstream)


@tf.function(jit_compile=True)
def _normalize_hard_swish(x, mean, inverse, gamma, beta):
    return hard_swish((x - mean) * (inverse * gamma) + beta)


@tf.function(jit_compile=True)
def _normalize_hard_swish_grad(x, mean, inverse, gamma, beta, upstream):
    # Batch norm's gradient through hard_swish, from x and the statistics alone: z is recomputed,
    # so neither the normalized nor the pre-activation tensor is kept or read back.
    normalized = (x - mean) * inverse
    gradient = upstream * _hard_swish_slope(normalized * gamma + beta)
    gradient_sum = tf.reduce_sum(gradient, 0)
    scaled_sum = tf.reduce_sum(gradient * normalized, 0)
    rows = tf.cast(tf.shape(x)[0], x.dtype)
    dx = (gamma * inverse / rows) * (rows * gradient - gradient_sum - normalized * scaled_sum)
    return dx, scaled_sum, gradient_sum


def batch_norm_hard_swish(x, gamma, beta, epsilon: float):
    """hard_swish of training-mode batch norm of ``x`` [rows, C]; returns it with the batch mean
    and (biased) variance.

    By the native kernels (``movinet.native``) where they are built and allowed: ~1.3x faster each
    way and exact to float's epsilon; else from TF's fused statistics and XLA kernels.
    """
    if native.enabled():
        return native.batch_norm_hard_swish(x, gamma, beta, epsilon)
    return xla_batch_norm_hard_swish(x, gamma, beta, epsilon)


def xla_batch_norm_hard_swish(x, gamma, beta, epsilon: float):
    @tf.custom_gradient
    def forward(x, gamma, beta):
        # The statistics from TF's fused kernel (its normalized output goes unused): faster on CPU
        # than tf.nn.moments' two reductions; its unbiased variance is turned into the biased one.
        channels = x.shape[-1]
        _, mean, unbiased, *_ = tf.raw_ops.FusedBatchNormV3(
            x=tf.reshape(x, [-1, 1, 1, channels]), scale=tf.ones([channels]), offset=tf.zeros([channels]),
            mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=epsilon, is_training=True)
        rows = tf.cast(tf.shape(x)[0], x.dtype)
        variance = unbiased * (tf.maximum(rows - 1.0, 0.0) / rows)
        inverse = tf.math.rsqrt(variance + epsilon)

        def grad(upstream, *_):
            return _normalize_hard_swish_grad(x, mean, inverse, gamma, beta, upstream)

        return (_normalize_hard_swish(x, mean, inverse, gamma, beta), tf.stop_gradient(mean),
                tf.stop_gradient(variance)), grad

    return forward(x, gamma, beta)


FUSE_MIN_ELEMENTS = 2 ** 18


def worth_fusing(x) -> bool:
    """Whether ``x`` (its known dimensions: per example when the batch is dynamic) is big enough
    that a fused XLA kernel pays for its compilation (~50 ms per call site and shape) in a step."""
    return int(np.prod([d for d in x.shape if d is not None])) >= FUSE_MIN_ELEMENTS


def activation_fn(name: str):
    """The element-wise activation ``name`` as the official tf_utils.get_activation computes it.

    The returned function takes ``training``: hard_swish over a large activation is then computed
    by a fused XLA kernel (same values; inference and export keep plain TF ops, which TF Lite
    converts and which cost a streaming step no XLA launch).
    """
    if name in ("swish", "simple_swish"):
        return lambda x, training=None: tf.nn.silu(x)
    if name == "hard_swish":
        return lambda x, training=None: training_hard_swish(x) if training and worth_fusing(x) else hard_swish(x)
    if name == "hard_sigmoid":
        return lambda x, training=None: tf.nn.relu6(x + 3.0) * HARD_SIGMOID_SCALE
    if name == "sigmoid":
        return lambda x, training=None: tf.sigmoid(x)
    if name == "relu":
        return lambda x, training=None: tf.nn.relu(x)
    if name == "relu6":
        return lambda x, training=None: tf.nn.relu6(x)
    if name == "linear":
        return lambda x, training=None: tf.identity(x)
    raise ValueError(f"unknown activation {name!r}")


_DEPTHWISE_AS_TAPS = contextvars.ContextVar("depthwise_as_taps", default=False)
_INT8_GRAPH = contextvars.ContextVar("int8_graph", default=False)


@contextlib.contextmanager
def _switched_on(switch: contextvars.ContextVar):
    token = switch.set(True)
    try:
        yield
    finally:
        switch.reset(token)


def int8_graph():
    """Within it, functions traced compute what int8 quantization keeps fast and bounded (for int8 export):

    - hard_swish as (x / 6) * relu6(x + 3): an ADD with a fused relu6 and two MULs in TF Lite, which
      XNNPACK runs on int8 tensors too (it runs the fused HARD_SWISH in float only);
    - a running mean's weight 1 / (frames seen + 1) looked up from an int32 frame count
      (``running_mean_weight``), so no tensor holds a count whose int8 range calibration would fix.
    """
    return _switched_on(_INT8_GRAPH)


# int8 graphs: past this many frames a running mean weighs each new frame 1 / RUNNING_MEAN_FRAMES (an
# average over about that many recent frames); smaller weights would round to 0 at int8 precision.
RUNNING_MEAN_FRAMES = 256


def running_mean_weight(count):
    """1 / (count + 1) as float32, for an int32 frame count (a scalar): the weight a running mean
    gives its next frame. In ``int8_graph`` a table lookup (see there)."""
    if _INT8_GRAPH.get():
        table = 1.0 / np.arange(1, RUNNING_MEAN_FRAMES + 1, dtype=np.float32)
        return tf.gather(tf.constant(table), tf.minimum(count, RUNNING_MEAN_FRAMES - 1))
    return 1.0 / (tf.cast(count, tf.float32) + 1.0)


def same_pool_counts(size: int, stride: int, length: int) -> np.ndarray:
    """How many of the ``size`` window positions of each 'SAME' pooling output along an axis of
    ``length`` fall inside the input (TF pads ``pad // 2`` before, the rest after)."""
    outputs = -(-length // stride)
    pad = max((outputs - 1) * stride + size - length, 0) // 2
    starts = np.arange(outputs) * stride - pad
    return np.minimum(starts + size, length) - np.maximum(starts, 0)


def average_pool(x, size: int, stride: int):
    """'SAME' average pooling of ``x`` ([N, H, W, C]), padding left out of each mean, as
    tf.nn.avg_pool2d. In ``int8_graph``: a depthwise conv of 1/size^2 taps times a constant map of
    size^2 / (positions inside) at the borders, ops XNNPACK runs on int8 tensors (its average
    pooling takes uint8 only: an int8 A0 spent a fifth of its frame in four of them)."""
    if not _INT8_GRAPH.get():
        return tf.nn.avg_pool2d(x, size, stride, "SAME")
    height, width, channels = x.shape[1:]
    taps = tf.constant(np.full((size, size, channels, 1), 1.0 / size ** 2, np.float32), x.dtype)
    y = tf.nn.depthwise_conv2d(x, taps, [1, stride, stride, 1], "SAME")
    counts = np.outer(same_pool_counts(size, stride, height), same_pool_counts(size, stride, width))
    if (counts == size ** 2).all():
        return y
    return y * tf.constant((size ** 2 / counts)[None, :, :, None], x.dtype)


def depthwise_as_taps():
    """Within it, functions traced compute every depthwise convolution as ``depthwise_conv2d`` taps.

    For graphs compiled by XLA on CPU: XLA lowers a depthwise convolution to its generic grouped
    convolution, a slow loop there (an A0 stream step took 37 ms), while shifted slices times a
    channel vector fuse into one loop with their neighbours (11 ms). Plain TF runs them as one op
    per tap, slower than its own depthwise kernel: use this only around XLA-compiled functions.
    """
    return _switched_on(_DEPTHWISE_AS_TAPS)


def same_padding(height, width, kernel_h, kernel_w, stride_h, stride_w) -> list:
    """TF's 'SAME' padding of an [N, H, W, C] input as explicit [[0, 0], [top, bottom], [left, right], [0, 0]]."""
    pads = []
    for size, k, s in ((height, kernel_h, stride_h), (width, kernel_w, stride_w)):
        total = max((downsampled(size, s) - 1) * s + k - size, 0)
        pads.append([total // 2, total - total // 2])
    return [[0, 0], *pads, [0, 0]]


# Without the native kernels: from this many taps (5x5), the filter gradient of a depthwise
# convolution takes TF's own kernel instead of oneDNN's, which is ~2x slower there on CPU (A0
# block0's 5x5 strided filter gradient: 11.8 -> 7.0 ms; at 3x3 oneDNN's is the faster, 4.0 against
# 7.3 ms at 64x43x43x80).
EIGEN_FILTER_GRADIENT_MIN_TAPS = 25


def _explicit_padding(x, kernel, strides, padding) -> list:
    if padding == "SAME":
        return same_padding(x.shape[1], x.shape[2], *kernel.shape[:2], *strides[1:3])
    return [[0, 0]] * 4 if padding == "VALID" else padding


def _eigen_filter_gradient(x, upstream, kernel, strides, paddings):
    return tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x, filter_sizes=tf.shape(kernel), out_backprop=upstream, strides=strides, padding="EXPLICIT",
        explicit_paddings=sum(paddings, []))


def _native_filter_gradient(x, upstream, kernel, strides, paddings):
    return native.depthwise_filter_gradient(x, upstream, kernel.shape[:2], strides, paddings)


def _depthwise_with_filter_gradient(x, kernel, strides, padding, filter_gradient):
    """The depthwise conv whose filter gradient is ``filter_gradient(x, upstream, kernel, strides,
    explicit paddings)``; the forward pass and the input gradient stay TF's (oneDNN's where it is on)."""
    paddings = _explicit_padding(x, kernel, strides, padding)

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(upstream):
            dx = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
                input_sizes=tf.shape(x), filter=kernel, out_backprop=upstream, strides=strides,
                padding=padding if isinstance(padding, str) else "EXPLICIT",
                explicit_paddings=[] if isinstance(padding, str) else sum(padding, []))
            return dx, filter_gradient(x, upstream, kernel, strides, paddings)

        return tf.nn.depthwise_conv2d(x, kernel, strides, padding), grad

    return conv(x, kernel)


def depthwise_conv2d(x, kernel, strides, padding, training=False):
    """``tf.nn.depthwise_conv2d`` (channel multiplier 1) of ``x`` [N, H, W, C] with ``kernel``
    [kh, kw, C, 1]; padding 'SAME', 'VALID' or explicit [[0, 0], [top, bottom], [left, right], [0, 0]].

    ``training`` (static shapes): the filter gradient comes from the native kernel
    (``movinet.native``; faster than TF's on most of A0's shapes: benchmarks/native_bench.py) or,
    without it, for a 'SAME' conv of ``EIGEN_FILTER_GRADIENT_MIN_TAPS`` taps or more, from TF's
    own kernel instead of oneDNN's
    (the same gradient; inference graphs keep the one plain op).
    Under ``depthwise_as_taps()``: the sum over the kh*kw taps of the padded input's strided
    window at that tap times the tap's channel weights, the same function as TF's op.
    """
    if not _DEPTHWISE_AS_TAPS.get():
        if training and x.shape[1:].is_fully_defined():
            if x.dtype == tf.float32 and native.enabled():
                return _depthwise_with_filter_gradient(x, kernel, strides, padding, _native_filter_gradient)
            if padding == "SAME" and kernel.shape[0] * kernel.shape[1] >= EIGEN_FILTER_GRADIENT_MIN_TAPS:
                return _depthwise_with_filter_gradient(x, kernel, strides, padding, _eigen_filter_gradient)
        return tf.nn.depthwise_conv2d(x, kernel, strides, padding)
    kernel_h, kernel_w = kernel.shape[:2]
    stride_h, stride_w = strides[1:3]
    _, height, width, _ = dims(x)
    if padding == "SAME":
        padding = same_padding(height, width, kernel_h, kernel_w, stride_h, stride_w)
    if padding != "VALID":
        x = tf.pad(x, padding)
        _, height, width, _ = dims(x)
    out_h, out_w = (height - kernel_h) // stride_h + 1, (width - kernel_w) // stride_w + 1
    y = None
    for i in range(kernel_h):
        for j in range(kernel_w):
            window = x[:, i:i + (out_h - 1) * stride_h + 1:stride_h, j:j + (out_w - 1) * stride_w + 1:stride_w]
            tap = window * kernel[i, j, :, 0]
            y = tap if y is None else y + tap
    return y


def dims(x) -> list:
    """The shape of ``x``: Python ints where static, scalar tensors where not.

    Static dimensions keep shape arithmetic out of the graph (a streaming step at batch 1
    then has no Shape/StridedSlice/Pack ops), which matters for per-frame latency.
    """
    static = x.shape.as_list()
    if all(d is not None for d in static):
        return static
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(static)]


def frames_to_batch(x):
    """[B, T, H, W, C] -> [B*T, H, W, C]."""
    return tf.reshape(x, [-1, *dims(x)[2:]])


def batch_to_frames(y, like):
    """[B*T, H', W', C'] -> [B, T, H', W', C'] with B and T taken from ``like``."""
    return tf.reshape(y, [*dims(like)[:2], *dims(y)[1:]])


def temporal_padding(x, kernel_t: int, causal: bool, buffer=None):
    """Pads time for a 'valid' temporal conv; returns (padded, new_buffer or None).

    Causal: kt-1 frames in front, taken from the stream buffer (zeros at the start of a
    clip); the new buffer is the last kt-1 frames seen. Non-causal: TF 'SAME' padding.
    """
    if kernel_t == 1:
        return x, None
    if causal:
        if buffer is None:
            buffer = tf.zeros_like(x[:, :1])
            buffer = tf.tile(buffer, [1, kernel_t - 1, 1, 1, 1])
        full = tf.concat([tf.cast(buffer, x.dtype), x], axis=1)
        return full, full[:, -(kernel_t - 1):]
    front = (kernel_t - 1) // 2
    return tf.pad(x, [[0, 0], [front, kernel_t - 1 - front], [0, 0], [0, 0], [0, 0]]), None
