"""Keras 3 layers of a MoViNet, with stream state passed in and out explicitly.

Every layer that carries state across calls takes a dict of the states it owns (possibly
empty: zeros are then used, the start of a clip) and returns the updated entries, with the
official names (``state_block1_layer0_stream_buffer``, ...). Nothing is kept in layer
attributes, so one model trains on clips, streams frame by frame, saves and exports.

The ops they compute with live in ``movinet.ops``, batch-norm folding in ``movinet.folding``.
Weight shapes follow the official layouts, so checkpoints map one to one.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from movinet.folding import batch_norm_affine, check_not_training, folded_constants
from movinet.ops import (HARD_SIGMOID_SCALE, activation_fn, average_pool, batch_norm_hard_swish, batch_to_frames,
                         depthwise_conv2d, dims, frames_to_batch, running_mean_weight, temporal_padding,
                         worth_fusing)

def frame_counts(states, name, dtype):
    """The frame counter ``name`` (int32 [1]) as a float scalar of ``dtype``, and the raw count."""
    count = states.get(name)
    if count is None:
        count = tf.zeros([1], tf.int32)
    count = tf.cast(count, tf.int32)
    return tf.cast(count[0], dtype), count


def six_hard_swish(x, training=None):
    """6 * hard_swish(x): what an activation computes once its 1/6 moved into the next layer."""
    return x * tf.nn.relu6(x + 3.0)


class BatchNorm(keras.layers.BatchNormalization):
    """Keras BatchNormalization computed by TF's fused kernel: one op forward, one backward.

    Same variables, outputs and moving-statistic updates as the Keras layer (whose moments,
    normalisation and their gradients take ~10 element-wise ops over the activations each);
    the fused kernel's unbiased batch variance is turned back into Keras' biased one for the
    moving average. Synchronized BN, masks and renorm take the Keras path.
    """

    def call(self, inputs, training=None, mask=None):
        if self.synchronized or self.renorm or mask is not None or self.axis not in (-1, inputs.shape.rank - 1):
            return super().call(inputs, training=training, mask=mask)
        shape = dims(inputs)
        channels = shape[-1]
        x = tf.reshape(inputs, [-1, 1, 1, channels]) if inputs.shape.rank != 4 else inputs
        x = tf.cast(x, tf.float32) if x.dtype not in (tf.float16, tf.bfloat16, tf.float32) else x
        scale = self.gamma if self.scale else tf.ones([channels])
        offset = self.beta if self.center else tf.zeros([channels])
        if training and self.trainable:
            y, mean, unbiased, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=scale, offset=offset, mean=tf.zeros([0]), variance=tf.zeros([0]),
                epsilon=self.epsilon, is_training=True)
            count = math.prod(shape[:-1]) if all(isinstance(d, int) for d in shape) else None
            if count is not None:   # static shapes: the correction is a Python number, not 5 ops
                variance = unbiased * (max(count - 1, 0) / count)
            else:
                count = tf.cast(tf.size(x) // channels, tf.float32)
                variance = unbiased * tf.maximum(count - 1.0, 0.0) / count
            decay = 1.0 - self.momentum
            self.moving_mean.assign_sub((self.moving_mean - mean) * decay)
            self.moving_variance.assign_sub((self.moving_variance - variance) * decay)
        else:
            y = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=scale, offset=offset, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, is_training=False)[0]
        return tf.cast(tf.reshape(y, shape), self.compute_dtype)

    def fuses_hard_swish(self, inputs, training) -> bool:
        """Whether ``hard_swish_after`` computes this training step's BN and hard_swish."""
        return bool(training and self.trainable and self.scale and self.center and not self.synchronized
                    and not self.renorm and self.axis in (-1, inputs.shape.rank - 1)
                    and inputs.dtype == tf.float32 and self.compute_dtype == "float32"
                    and worth_fusing(inputs))

    def hard_swish_after(self, inputs):
        """``hard_swish(self(inputs, training=True))`` with one XLA kernel each way after the statistics.

        The statistics come from TF's fused BN op; normalization, scale, shift and hard_swish are
        one XLA kernel forward, and their gradient (batch norm's, through hard_swish's slope) one
        backward that recomputes the pre-activation from ``inputs``: ~3 passes over the activations
        forward and ~5 backward instead of ~5 and ~8 for the fused BN op and a separate hard_swish.
        The moving statistics move as in ``call``.
        """
        shape = dims(inputs)
        gamma, beta = tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta)
        y, mean, variance = batch_norm_hard_swish(tf.reshape(inputs, [-1, shape[-1]]), gamma, beta, self.epsilon)
        decay = 1.0 - self.momentum
        self.moving_mean.assign_sub((self.moving_mean - mean) * decay)
        self.moving_variance.assign_sub((self.moving_variance - variance) * decay)
        return tf.reshape(y, shape)


def normalize_activate(bn, activation, act, y, training):
    """``act(bn(y))``, the pair fused in training where ``bn.hard_swish_after`` can."""
    if activation == "hard_swish" and act is not None and bn.fuses_hard_swish(y, training):
        return bn.hard_swish_after(y)
    y = bn(y, training=training)
    return act(y, training=training) if act is not None else y


@dataclasses.dataclass(frozen=True)
class ConvSettings:
    """What every convolution and BN of a model shares, taken from its ModelOptions."""

    kernel_initializer: object = "he_normal"
    kernel_l2: float = 0.0
    bias_l2: float = 0.0
    norm_momentum: float = 0.99
    norm_epsilon: float = 1e-3
    sync_bn: bool = False

    @classmethod
    def from_options(cls, options) -> "ConvSettings":
        return cls(options.kernel_initializer, options.kernel_l2, options.bias_l2, options.norm_momentum,
                   options.norm_epsilon, options.use_sync_bn)

    def batch_norm(self, name: str):
        return BatchNorm(momentum=self.norm_momentum, epsilon=self.norm_epsilon, synchronized=self.sync_bn,
                         name=name)

    def kernel_regularizer(self):
        return keras.regularizers.L2(self.kernel_l2) if self.kernel_l2 else None

    def bias_regularizer(self):
        return keras.regularizers.L2(self.bias_l2) if self.bias_l2 else None

    def replace(self, **changes) -> "ConvSettings":
        return dataclasses.replace(self, **changes)


class ConvNorm(keras.layers.Layer):
    """A per-frame convolution (pointwise, full 2D, or depthwise 2D) -> BN -> activation.

    Pointwise kernels are [Cin, Cout]; full 2D kernels [kh, kw, Cin, Cout]; depthwise
    kernels [kh, kw, C, 1] (the official 2plus1d layouts). After ``fold()`` the BN is part of
    the kernel and bias (inference only).
    """

    def __init__(self, filters: int, kernel_size=(1, 1), stride: int = 1, depthwise: bool = False,
                 use_bias: bool = False, use_bn: bool = True, activation: str | None = None,
                 settings: ConvSettings = ConvSettings(), **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = tuple(kernel_size)
        self.stride = stride
        self.depthwise = depthwise
        self.use_bias = use_bias
        self.settings = settings
        self.activation = activation
        self.act = activation_fn(activation) if activation else None
        self.bn = settings.batch_norm("bn") if use_bn else None
        self.folded = None

    @property
    def pointwise(self) -> bool:
        return self.kernel_size == (1, 1) and not self.depthwise and self.stride == 1

    def build(self, input_shape):
        channels = input_shape[-1]
        if self.pointwise:
            shape = (channels, self.filters)
        elif self.depthwise:
            shape = (*self.kernel_size, channels, 1)
        else:
            shape = (*self.kernel_size, channels, self.filters)
        self.kernel = self.add_weight(name="kernel", shape=shape, initializer=self.settings.kernel_initializer,
                                      regularizer=self.settings.kernel_regularizer())
        self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer="zeros",
                                     regularizer=self.settings.bias_regularizer())
                     if self.use_bias else None)
        if self.bn is not None:
            self.bn.build((*input_shape[:-1], channels if self.depthwise else self.filters))

    def convolve(self, x, kernel, bias=None, training=False):
        """The convolution, plus ``bias`` added before any reshape (so MatMul/Conv2D+BiasAdd fuse)."""
        kernel = tf.cast(kernel, x.dtype)
        bias = None if bias is None else tf.cast(bias, x.dtype)
        rank5 = x.shape.rank == 5
        shape = dims(x)
        if self.pointwise:
            y = tf.matmul(tf.reshape(x, [-1, shape[-1]]), kernel)
        else:
            frames = frames_to_batch(x) if rank5 else x
            strides = [1, self.stride, self.stride, 1]
            if self.depthwise:
                y = depthwise_conv2d(frames, kernel, strides, "SAME", training=training)
            else:
                y = tf.nn.conv2d(frames, kernel, strides, "SAME")
        if bias is not None:
            y = tf.nn.bias_add(y, bias)
        if self.pointwise:
            return tf.reshape(y, [*shape[:-1], self.filters])
        return batch_to_frames(y, x) if rank5 else y

    def call(self, x, training=None):
        if self.folded is not None:
            check_not_training(self, training)
            y = self.convolve(x, *self.folded)
        else:
            y = self.convolve(x, self.kernel, self.bias, training=training is True)
            if self.bn is not None:
                return normalize_activate(self.bn, self.activation, self.act, y, training)
        return self.act(y, training=training) if self.act else y

    def fold(self, extra_scale: float = 1.0, input_scale: float = 1.0, shift: float = 0.0) -> None:
        """Folds the BN into the kernel and a bias, with constant factors around it.

        ``extra_scale`` multiplies the output before the activation (a ReZero scale),
        ``input_scale`` the input (a factor the layer before left out), ``shift`` is added
        before the activation.
        """
        if extra_scale != 1.0 and self.act is not None:
            raise ValueError(f"{self.name}: a factor after the activation cannot be folded")
        kernel = self.kernel.numpy() * input_scale
        channels = kernel.shape[-2] if self.depthwise else kernel.shape[-1]
        bias = self.bias.numpy() if self.bias is not None else np.zeros(channels)
        scale, offset = batch_norm_affine(self.bn) if self.bn is not None else (np.ones(channels), 0.0)
        scale, bias = scale * extra_scale, (bias * scale + offset) * extra_scale + shift
        self.folded = folded_constants(kernel, scale, bias, channel_axis=-2 if self.depthwise else -1)

    def drop_output_factor(self) -> float:
        """Folding: leaves out the constant factor of its activation (hard_swish's 1/6, hard_sigmoid's
        +3 and scale) where the next layer is linear and takes it over; returns that factor.

        The ``shift`` of hard_sigmoid is returned by ``fold_shift``. Only for outputs that no
        state holds (states must keep their values).
        """
        if self.activation == "hard_swish":
            self.act = six_hard_swish
            return 1.0 / 6.0
        if self.activation == "hard_sigmoid":
            self.act = activation_fn("relu6")
            return HARD_SIGMOID_SCALE
        return 1.0

    def fold_shift(self) -> float:
        """The constant added before the activation once ``drop_output_factor`` changed it."""
        return 3.0 if self.activation == "hard_sigmoid" else 0.0


class FeatureConv(keras.layers.Layer):
    """The depthwise (t, h, w) convolution of a bottleneck layer, causal or not.

    conv_type '3d': one depthwise 3D conv (kernel [kt, kh, kw, 1, C]) -> BN -> act; in a
    causal model the stream buffer holds pre-stride frames.
    conv_type '2plus1d'/'3d_2plus1d': depthwise (kh, kw) conv -> BN -> act, then depthwise
    (kt, 1) conv along time (kernel [kt, 1, C, 1]) -> BN -> act; the buffer holds post-stride
    frames (official StreamConvBlock).
    """

    def __init__(self, kernel, stride: int, separable: bool, causal: bool, activation: str,
                 state_prefix: str, settings: ConvSettings = ConvSettings(), **kwargs):
        super().__init__(**kwargs)
        self.kernel_t, self.kernel_h, self.kernel_w = kernel
        self.stride = stride
        self.separable = separable
        self.causal = causal
        self.buffer_name = f"{state_prefix}_stream_buffer"
        self.settings = settings
        self.activation = activation
        self.act = activation_fn(activation)
        if separable:
            self.spatial = ConvNorm(0, (self.kernel_h, self.kernel_w), stride, depthwise=True,
                                    activation=activation, settings=settings, name="spatial")
            self.bn_temporal = settings.batch_norm("bn_temporal") if self.kernel_t > 1 else None
        else:
            self.bn = settings.batch_norm("bn")
        self.folded = None

    @property
    def state_names(self) -> tuple[str, ...]:
        return (self.buffer_name,) if self.causal and self.kernel_t > 1 else ()

    def build(self, input_shape):
        channels = input_shape[-1]
        regularizer = self.settings.kernel_regularizer()
        initializer = self.settings.kernel_initializer
        if self.separable:
            self.spatial.build(input_shape)
            if self.kernel_t > 1:
                self.temporal_kernel = self.add_weight(
                    name="temporal_kernel", shape=(self.kernel_t, 1, channels, 1),
                    initializer=initializer, regularizer=regularizer)
                self.bn_temporal.build(input_shape)
        else:
            self.kernel = self.add_weight(
                name="kernel", shape=(self.kernel_t, self.kernel_h, self.kernel_w, 1, channels),
                initializer=initializer, regularizer=regularizer)
            self.bn.build(input_shape)

    def temporal_conv(self, x, kernel, front: int = 0, back: int = 0, training: bool = False):
        """The depthwise (kt, 1) conv along time of ``x`` ([B, T, H, W, C]) with ``front`` and
        ``back`` frames of zero padding (none: 'valid' over already padded frames).

        One DepthwiseConv2D over [B, T, H*W, C]: its gradient is ~20x faster on CPU than the sum
        of kt time slices, and a stream step is one op. Padding is the op's own (explicit), so
        training makes no padded copy of the activations, nor slices it off the gradient.
        """
        batch, frames, height, width, channels = dims(x)
        padding = "VALID" if front == back == 0 else [[0, 0], [front, back], [0, 0], [0, 0]]
        y = depthwise_conv2d(tf.reshape(x, [batch, frames, -1, channels]), tf.cast(kernel, x.dtype), [1, 1, 1, 1],
                             padding, training=training)
        return tf.reshape(y, [batch, frames + front + back - (self.kernel_t - 1), height, width, channels])

    def call(self, x, states, training=None):
        new_states = {}
        if self.separable:
            x = self.spatial(x, training=training)
            if self.kernel_t > 1:
                kernel = self.temporal_kernel if self.folded is None else self.folded[0]
                previous = states.get(self.buffer_name)
                if previous is None:
                    # The start of a clip (training, base mode): zero padding inside the conv. A
                    # causal layer still returns its next buffer (a graph prunes it when unused).
                    front = self.kernel_t - 1 if self.causal else (self.kernel_t - 1) // 2
                    y = self.temporal_conv(x, kernel, front, self.kernel_t - 1 - front, training=training is True)
                    buffer = temporal_padding(x, self.kernel_t, True, None)[1] if self.causal else None
                else:
                    padded, buffer = temporal_padding(x, self.kernel_t, self.causal, previous)
                    y = self.temporal_conv(padded, kernel, training=training is True)
                x = self.normalize(y, self.bn_temporal, training)
                if buffer is not None:
                    new_states[self.buffer_name] = buffer
            return x, new_states

        padded, buffer = temporal_padding(x, self.kernel_t, self.causal, states.get(self.buffer_name))
        if buffer is not None:
            new_states[self.buffer_name] = buffer
        frames = dims(x)[1]
        kernel = self.kernel if self.folded is None else self.folded[0]
        kernel = tf.cast(kernel, x.dtype)
        channels = kernel.shape[-1]
        strides = [1, self.stride, self.stride, 1]
        y = None
        for i in range(self.kernel_t):
            tap = tf.reshape(kernel[i], [self.kernel_h, self.kernel_w, channels, 1])
            window = padded[:, i:i + frames]
            out = depthwise_conv2d(frames_to_batch(window), tap, strides, "SAME", training=training is True)
            y = out if y is None else y + out
        return self.normalize(batch_to_frames(y, x), self.bn, training), new_states

    def normalize(self, y, bn, training):
        """``bn`` (or, folded, the bias that replaced it), then the activation."""
        if self.folded is None:
            return normalize_activate(bn, self.activation, self.act, y, training)
        check_not_training(self, training)
        return self.act(tf.nn.bias_add(y, tf.cast(self.folded[1], y.dtype)))

    def drop_output_factor(self) -> float:
        """Leaves out hard_swish's 1/6 from the activation after the last conv, for the layers after
        it to take over (see ``ConvNorm.drop_output_factor``); returns it (1 for other activations)."""
        if self.separable and self.kernel_t == 1:
            return self.spatial.drop_output_factor()
        if self.activation != "hard_swish":
            return 1.0
        self.act = six_hard_swish
        return 1.0 / 6.0

    def fold(self, input_scale: float = 1.0, scale_states: bool = False) -> None:
        """Folds each BN into the depthwise kernel before it (inference only); ``input_scale``
        is a factor of the input to take over.

        A '3d' buffer holds the input, a separable one the spatial conv's output: a factor of
        what a buffer holds moves only with ``scale_states`` (the buffer then holds scaled values).
        """
        if self.separable:
            temporal_scale = 1.0
            if self.kernel_t > 1 and scale_states:
                temporal_scale = self.spatial.drop_output_factor()
            self.spatial.fold(input_scale=input_scale)
            if self.kernel_t > 1:
                scale, offset = batch_norm_affine(self.bn_temporal)
                self.folded = folded_constants(self.temporal_kernel.numpy() * temporal_scale, scale, offset,
                                               channel_axis=-2)
        else:
            if input_scale != 1.0 and self.causal and not scale_states:
                raise ValueError(f"{self.name}: the stream buffer holds the input; its scale cannot change")
            scale, offset = batch_norm_affine(self.bn)
            self.folded = folded_constants(self.kernel.numpy() * input_scale, scale, offset)


class PositionalEncoding(keras.layers.Layer):
    """Sinusoidal encoding of the absolute frame index, scaled by a ReZero scalar.

    Sines of the even angles then cosines of the odd ones (concatenated, not interleaved),
    as the official nn_layers.PositionalEncoding; the frame counter makes it streamable.
    """

    def __init__(self, state_prefix: str, **kwargs):
        super().__init__(**kwargs)
        self.count_name = f"{state_prefix}_pos_enc_frame_count"

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(), initializer="zeros")

    def call(self, x, states):
        start, count = frame_counts(states, self.count_name, tf.float32)
        frames = dims(x)[1]
        channels = x.shape[-1]
        positions = start + tf.cast(tf.range(frames), tf.float32)
        index = tf.range(channels)
        power = tf.cast(2 * (index // 2), tf.float32) / float(channels)
        angles = 1.0 / tf.pow(10000.0, power)
        radians = positions[:, None] * angles[None, :]
        encoding = tf.concat([tf.sin(radians[:, 0::2]), tf.cos(radians[:, 1::2])], axis=-1)
        encoding = tf.reshape(encoding, [1, frames, 1, 1, channels])
        x = x + tf.cast(self.scale * encoding, x.dtype)
        return x, {self.count_name: count + frames}


def cumulative_mean(per_frame, states, prefix, causal):
    """Mean over all frames seen so far of ``per_frame`` ([B, T, 1, 1, C]).

    causal: the running mean up to and including each frame ([B, T, 1, 1, C]); else the
    mean over every frame seen, the current ones included ([B, 1, 1, 1, C]).
    The state ``{prefix}_pool_buffer`` holds the running *mean* (not the official running
    sum), so it stays bounded on long streams and survives int8 quantization; with
    ``{prefix}_pool_frame_count`` the two give the same outputs.
    """
    buffer_name, count_name = f"{prefix}_pool_buffer", f"{prefix}_pool_frame_count"
    dtype = per_frame.dtype
    per_frame = tf.cast(per_frame, tf.float32)        # frame counts overflow float16 precision
    seen, count = frame_counts(states, count_name, tf.float32)
    previous = states.get(buffer_name)
    frames = dims(per_frame)[1]
    if isinstance(frames, int) and frames == 1:
        # A stream step moves the mean towards the new frame by the frame's weight: no tensor grows
        # with the stream (a running sum would outgrow the int8 range calibration gives it).
        weight = running_mean_weight(count[0])
        previous = 0.0 if previous is None else tf.cast(previous, tf.float32)
        means = previous + (per_frame - previous) * weight
        return tf.cast(means, dtype), {buffer_name: tf.cast(means, dtype), count_name: count + frames}
    previous_sum = 0.0 if previous is None else tf.cast(previous, tf.float32) * seen
    if causal:
        sums = tf.cumsum(per_frame, axis=1) + previous_sum
        totals = seen + tf.cast(tf.range(1, frames + 1), tf.float32)
        means = sums * tf.reshape(1.0 / totals, [1, -1, 1, 1, 1])
        last = means[:, -1:]
    else:
        total = tf.reduce_sum(per_frame, axis=1, keepdims=True) + previous_sum
        means = last = total * (1.0 / (seen + tf.cast(frames, tf.float32)))
    return tf.cast(means, dtype), {buffer_name: tf.cast(last, dtype), count_name: count + frames}


class SqueezeExcitation(keras.layers.Layer):
    """Squeeze-and-excitation with causal pooling (official StreamSqueezeExcitation).

    se_type '3d': (cumulative) spatiotemporal mean; '2d': per-frame spatial mean;
    '2plus3d': concat([(cumulative) spatiotemporal mean, per-frame spatial mean]).
    Then optional positional encoding -> 1x1 conv + activation -> 1x1 conv + gate -> x * gate.
    """

    def __init__(self, channels: int, se_type: str, hidden: int, causal: bool, positional_encoding: bool,
                 activation: str, gating_activation: str, state_prefix: str,
                 settings: ConvSettings = ConvSettings(), **kwargs):
        super().__init__(**kwargs)
        self.se_type = se_type
        self.hidden = hidden
        self.causal = causal
        self.state_prefix = state_prefix
        self.reduce = ConvNorm(hidden, use_bias=True, use_bn=False, activation=activation, settings=settings,
                               name="se_reduce")
        self.expand = ConvNorm(channels, use_bias=True, use_bn=False, activation=gating_activation,
                               settings=settings, name="se_expand")
        self.pos_encoding = PositionalEncoding(state_prefix, name="pos_encoding") if positional_encoding else None

    def build(self, input_shape):
        channels = input_shape[-1]
        pooled = 2 * channels if self.se_type == "2plus3d" else channels
        self.reduce.build((None, None, 1, 1, pooled))
        self.expand.build((None, None, 1, 1, self.hidden))
        if self.pos_encoding is not None:
            self.pos_encoding.build((None, None, 1, 1, pooled))

    def call(self, x, states):
        new_states = {}
        spatial = tf.reduce_mean(x, axis=[2, 3], keepdims=True)
        if self.se_type == "2d":
            pooled = spatial
        else:
            if self.causal:
                temporal, new_states = cumulative_mean(spatial, states, self.state_prefix, causal=True)
            else:
                temporal = tf.reduce_mean(spatial, axis=1, keepdims=True)
            if self.se_type == "2plus3d":
                if not self.causal:
                    temporal = tf.tile(temporal, [1, dims(x)[1], 1, 1, 1])
                pooled = tf.concat([temporal, spatial], axis=-1)
            else:
                pooled = temporal
        if self.pos_encoding is not None:
            pooled, pe_states = self.pos_encoding(pooled, states)
            new_states.update(pe_states)
        gate = self.expand(self.reduce(pooled))
        return x * gate, new_states


class StochasticDepth(keras.layers.Layer):
    """Drops the residual branch per sample with probability ``rate`` while training."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0)
        mask = tf.floor(keep + tf.random.uniform(shape, dtype=x.dtype))
        return x / keep * mask


class Bottleneck(keras.layers.Layer):
    """One MoViNet layer (official MovinetBlock): inverted bottleneck with SE and ReZero.

        x --> expand 1x1x1 -> depthwise (t,h,w) -> SE -> project 1x1x1 -> * rezero -> (+) -->
          \\-- identity, or [avgpool 3x3/2] -> 1x1x1 conv + BN (skip projection) -----/
    """

    def __init__(self, in_filters: int, out_filters: int, expand: int, kernel, stride: int,
                 options, se_hidden: int, drop_rate: float, state_prefix: str, **kwargs):
        super().__init__(**kwargs)
        self.state_prefix = state_prefix
        settings = ConvSettings.from_options(options)
        self.expansion = ConvNorm(expand, activation=options.activation, settings=settings, name="expansion")
        self.feature = FeatureConv(kernel, stride, options.separable, options.causal, options.activation,
                                   state_prefix, settings=settings, name="feature")
        self.se = (SqueezeExcitation(expand, options.se_type, se_hidden, options.causal, options.positional_encoding,
                                     options.activation, options.gating_activation, state_prefix,
                                     settings=settings, name="se")
                   if options.se_type != "none" else None)
        self.projection = ConvNorm(out_filters, settings=settings, name="projection")
        self.downsample = stride > 1
        self.skip = (ConvNorm(out_filters, settings=settings, name="skip_project")
                     if in_filters != out_filters or self.downsample else None)
        self.stochastic_depth = StochasticDepth(drop_rate, name="stochastic_depth") if drop_rate > 0 else None
        self.in_filters, self.expand_filters = in_filters, expand
        self.folded = False

    def build(self, input_shape):
        self.expansion.build(input_shape)
        expanded = (*input_shape[:-1], self.expand_filters)
        self.feature.build(expanded)
        if self.se is not None:
            self.se.build(expanded)
        self.projection.build(expanded)
        if self.skip is not None:
            self.skip.build(input_shape)
        self.rezero = self.add_weight(name="rezero", shape=(), initializer="zeros")

    def call(self, inputs, states, training=None):
        x = self.expansion(inputs, training=training)
        x, new_states = self.feature(x, states, training=training)
        if self.se is not None:
            x, se_states = self.se(x, states)
            new_states.update(se_states)
        x = self.projection(x, training=training)
        if not self.folded:
            x = x * tf.cast(self.rezero, x.dtype)
        if self.stochastic_depth is not None:
            x = self.stochastic_depth(x, training=training)
        skip = inputs
        if self.skip is not None:
            if self.downsample:
                pooled = average_pool(frames_to_batch(inputs), 3, 2)
                skip = batch_to_frames(pooled, inputs)
            skip = self.skip(skip, training=training)
        return x + skip, new_states

    def fold(self, input_scale: float = 1.0, scale_states: bool = False) -> None:
        """Folds every BN, and the ReZero scale, into the convolutions (inference only).

        Constant factors of activations move into the linear layer after them: the expansion's
        hard_swish 1/6 into the depthwise conv, the depthwise conv's into the SE reduction and the
        projection, the SE reduction's into the SE expansion, the hard_sigmoid gate's +3 into the SE
        expansion's bias and its scale into the projection; ``input_scale`` is a factor of the
        input (the expansion and skip projection take it over). Each saves an element-wise op per
        frame. A factor of what a stream state holds (a buffer, a pool) moves only with
        ``scale_states``: the states then hold scaled values, right for this folded copy only.
        """
        if input_scale != 1.0 and self.skip is None:
            raise ValueError(f"{self.name}: an identity skip adds the input as it is; its scale cannot change")
        buffer_scaled = self.feature.separable or scale_states or not self.feature.causal
        spatial_scale = self.expansion.drop_output_factor() if buffer_scaled else 1.0
        self.expansion.fold(input_scale=input_scale)
        self.feature.fold(input_scale=spatial_scale, scale_states=scale_states)
        # The SE pool state (a running mean) holds the feature output; positional encoding is added
        # to the pooled features unscaled.
        pooled_scaled = self.se is None or (scale_states and self.se.pos_encoding is None)
        feature_scale = self.feature.drop_output_factor() if pooled_scaled else 1.0
        gate_scale = 1.0
        if self.se is not None:
            expand_scale = self.se.reduce.drop_output_factor()
            self.se.reduce.fold(input_scale=feature_scale)
            shift = self.se.expand.fold_shift()
            gate_scale = self.se.expand.drop_output_factor()
            self.se.expand.fold(input_scale=expand_scale, shift=shift)
        self.projection.fold(extra_scale=float(self.rezero.numpy()), input_scale=gate_scale * feature_scale)
        if self.skip is not None:
            self.skip.fold(input_scale=input_scale)
        self.folded = True


class Head(keras.layers.Layer):
    """1x1x1 projection + BN + activation, then the (never causal) global average pool.

    In a causal model the pool is stateful: its output after any chunk is the mean of the
    projected features over every frame seen so far, so streaming ends on the clip's value.
    """

    def __init__(self, project_filters: int, options, **kwargs):
        super().__init__(**kwargs)
        self.causal = options.causal
        self.pooling = options.average_pooling_type
        self.project = ConvNorm(project_filters, activation=options.activation,
                                settings=ConvSettings.from_options(options), name="project")

    def build(self, input_shape):
        self.project.build(input_shape)

    def fold(self, scale_states: bool = False) -> float:
        """Folds the projection's BN; returns the factor of its activation left for the classifier
        to take over (hard_swish's 1/6; 1 where the pool state holds the output and not
        ``scale_states``)."""
        stateful = self.causal and self.pooling not in ("none", "2d")
        scale = self.project.drop_output_factor() if scale_states or not stateful else 1.0
        self.project.fold()
        return scale

    def call(self, x, states, training=None):
        x = self.project(x, training=training)
        if self.pooling == "none":
            return x, {}
        spatial = tf.reduce_mean(x, axis=[2, 3], keepdims=True)
        if self.pooling == "2d":
            return spatial, {}
        if self.causal:
            return cumulative_mean(spatial, states, "state_head", causal=False)
        return tf.reduce_mean(spatial, axis=1, keepdims=True), {}


class Classifier(keras.layers.Layer):
    """1x1x1 conv + bias + activation -> dropout -> 1x1x1 conv + bias -> logits [B, classes]."""

    def __init__(self, head_filters: int, num_classes: int, activation: str, dropout_rate: float,
                 settings: ConvSettings = ConvSettings(), **kwargs):
        super().__init__(**kwargs)
        self.head = ConvNorm(head_filters, use_bias=True, use_bn=False, activation=activation, settings=settings,
                             name="head")
        self.dropout = keras.layers.Dropout(dropout_rate, name="dropout") if dropout_rate > 0 else None
        # The official classifier conv: N(0, 0.01) initialised, never regularized.
        classifier_settings = settings.replace(kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                                               kernel_l2=0.0)
        self.classifier = ConvNorm(num_classes, use_bias=True, use_bn=False, settings=classifier_settings,
                                   name="classifier")
        self.head_filters = head_filters

    def build(self, input_shape):
        self.head.build(input_shape)
        self.classifier.build((*input_shape[:-1], self.head_filters))

    def call(self, x, training=None):
        x = self.head(x)
        if self.dropout is not None:
            x = self.dropout(x, training=training)
        x = self.classifier(x)
        x = tf.reduce_mean(x, axis=[1, 2, 3]) if x.shape.rank == 5 else x
        return tf.cast(x, tf.float32)

    def fold(self, input_scale: float = 1.0) -> None:
        """Folds; ``input_scale`` is a factor of the input, the hidden activation's 1/6 moves into
        the classifier."""
        hidden_scale = self.head.drop_output_factor()
        self.head.fold(input_scale=input_scale)
        self.classifier.fold(input_scale=hidden_scale)
