"""The weight-sharing supernet of a space: every point of it is a sub-network, chosen per call.

    clip [B,T,H,W,3] -> stem (width mask) -> block b: layers 0 .. max depth-1, the block's sampled
    depth deciding where its output is taken -> head (project mask) -> classifier (head mask) -> logits

A layer (the stand-alone ``movinet.layers.Bottleneck``, causal, without stream buffers: zero padding
in front is the empty buffer of a clip's start):

    x (in mask) -> expand 1x1 [widest in, widest expand] -> BN, act, expand mask
      -> switch(kernel): that kernel's own depthwise (2+1)D or 3D conv, causally padded -> BN, act, mask
      -> switch(se_type): that type's own causal SE, hidden width from the masked width -> mask
      -> project 1x1 -> BN, out mask -> x ReZero  (+) skip: identity, or a projection where the widths
         differ or the layer strides

Widths are channel masks over the widest choice (TuNAS): a block's width is one mask shared by all
its layers and the residuals, each layer's expansion its own mask, and masked channels are exactly
zero (the mask multiplies after each BN and activation), so a sub-network computes what the
stand-alone network of its spec computes. Only the sampled kernel and SE branch run (one
``tf.switch_case`` per decision); the others get zero gradients, never None, so every replica's
gradient list is the same. Batch norm always uses the batch's statistics (TuNAS: replicas run
different architectures, whose moving statistics would mean nothing).
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from movinet.cost import se_hidden
from movinet.ops import (activation_fn, batch_norm_hard_swish, batch_to_frames, depthwise_conv2d, dims,
                         frames_to_batch, worth_fusing)
from movinet.options import ModelOptions
from search.oneshot.controller import Sample
from search.oneshot.costs import SE_PARAM
from search.space import LayerChoices, SearchSpace


def batch_norm(x, gamma, beta, epsilon: float):
    """Batch norm of ``x`` (channels last) with the batch's own statistics, by TF's fused kernel."""
    shape = dims(x)
    y = tf.raw_ops.FusedBatchNormV3(x=tf.reshape(x, [-1, 1, 1, shape[-1]]), scale=gamma, offset=beta,
                                    mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=epsilon,
                                    is_training=True)[0]
    return tf.reshape(y, shape)


def normalize_activate(x, gamma, beta, epsilon: float, activation: str):
    """``activation(batch_norm(x))`` as the stand-alone layers' training step computes it: for
    hard_swish over a large float32 tensor one fused kernel each way, else BN then the activation
    (itself a fused kernel where it pays)."""
    if activation == "hard_swish" and x.dtype == tf.float32 and worth_fusing(x):
        shape = dims(x)
        y = batch_norm_hard_swish(tf.reshape(x, [-1, shape[-1]]), gamma, beta, epsilon)[0]
        return tf.reshape(y, shape)
    return activation_fn(activation)(batch_norm(x, gamma, beta, epsilon), training=True)


def pointwise(x, kernel, bias=None):
    """A 1x1x1 convolution of a channels-last tensor."""
    shape = dims(x)
    y = tf.matmul(tf.reshape(x, [-1, shape[-1]]), kernel)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    return tf.reshape(y, [*shape[:-1], kernel.shape[-1]])


def width_mask(width, widest: int):
    """The first ``width`` of ``widest`` channels, as a float mask."""
    return tf.sequence_mask(width, widest, dtype=tf.float32)


def select(index, mixed, branches: Sequence[Callable]):
    """The branch ``index`` (only it runs), or with ``mixed`` the mean of all (op warm-up).

    One ``tf.switch_case`` whose last branch is the mean: the variables of branches that do not
    run get zero gradients, never None.
    """
    if len(branches) == 1:
        return branches[0]()

    def mean():
        # Stack and reduce, not adds: Grappler turns adds inside a case branch into temporary
        # variables whose names collide once the branch is inlined twice in one step.
        return tf.reduce_mean(tf.stack([branch() for branch in branches]), axis=0)

    return tf.switch_case(tf.where(mixed, len(branches), index), [*branches, mean])


class SeededInitializers:
    """Fresh initializers with seeds drawn in creation order from one seed: every process builds
    the same supernet (a resumed run, each worker of a strategy)."""

    def __init__(self, seed: int):
        self.seeds = itertools.count(seed * 100_003)

    def __call__(self, initializer):
        initializer = keras.initializers.get(initializer)
        return type(initializer).from_config({**initializer.get_config(), "seed": next(self.seeds)})


class Architecture:
    """A sample resolved into the widths it stands for (int32 scalars) for one supernet."""

    def __init__(self, space: SearchSpace, sample: Sample):
        self.space = space
        self.sample = sample
        self.params = {p.name: p for p in space.params()}

    def index(self, name: str):
        return self.sample.index[name]

    def mixed(self, name: str):
        return self.sample.mixed[name]

    def value(self, name: str):
        """A numeric parameter's sampled value."""
        return tf.gather(tf.constant(self.params[name].choices), self.index(name))

    def lookup(self, table: np.ndarray, *names: str):
        return tf.gather_nd(tf.constant(table, tf.int32), tf.stack([self.index(n) for n in names]))


class Stem(keras.layers.Layer):
    def __init__(self, space: SearchSpace, options: ModelOptions, init: SeededInitializers, **kwargs):
        super().__init__(**kwargs)
        self.widest = max(space.stem_filters)
        self.kernel_hw, self.stride = space.stem_kernel[1:], space.stem_stride[1]
        self.options = options
        self.kernel = self.add_weight(name="kernel", shape=(*self.kernel_hw, 3, self.widest),
                                      initializer=init(options.kernel_initializer))
        self.gamma = self.add_weight(name="gamma", shape=(self.widest,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(self.widest,), initializer="zeros")
        self.built = True

    def call(self, clip, arch: Architecture):
        y = tf.nn.conv2d(frames_to_batch(clip), self.kernel, [1, self.stride, self.stride, 1], "SAME")
        y = normalize_activate(batch_to_frames(y, clip), self.gamma, self.beta, self.options.norm_epsilon,
                               self.options.activation)
        return y * width_mask(arch.value("stem.filters"), self.widest)


class KernelBranch(keras.layers.Layer):
    """One kernel choice's depthwise conv: (2+1)D (spatial -> BN, act -> causal temporal -> BN, act)
    as the stream models' default, or 3D (the temporal taps' spatial convs summed -> BN, act)."""

    def __init__(self, kernel, stride: int, channels: int, options: ModelOptions, init: SeededInitializers,
                 **kwargs):
        super().__init__(**kwargs)
        self.kernel_t, self.kernel_h, self.kernel_w = kernel
        self.stride = stride
        self.separable = options.separable
        self.epsilon = options.norm_epsilon
        self.activation = options.activation
        kernel_init = options.kernel_initializer
        weight = self.add_weight
        if self.separable:
            self.spatial = weight(name="spatial_kernel", shape=(self.kernel_h, self.kernel_w, channels, 1),
                                  initializer=init(kernel_init))
            if self.kernel_t > 1:
                self.temporal = weight(name="temporal_kernel", shape=(self.kernel_t, 1, channels, 1),
                                       initializer=init(kernel_init))
        else:
            self.kernel = weight(name="kernel", shape=(self.kernel_t, self.kernel_h, self.kernel_w, 1, channels),
                                 initializer=init(kernel_init))
        norms = 2 if self.separable and self.kernel_t > 1 else 1
        self.gammas = [weight(name=f"gamma{i}", shape=(channels,), initializer="ones") for i in range(norms)]
        self.betas = [weight(name=f"beta{i}", shape=(channels,), initializer="zeros") for i in range(norms)]
        self.built = True

    def normalize(self, y, i: int, channel_mask):
        return normalize_activate(y, self.gammas[i], self.betas[i], self.epsilon, self.activation) * channel_mask

    def spatial_conv(self, x, kernel):
        strides = [1, self.stride, self.stride, 1]
        return batch_to_frames(depthwise_conv2d(frames_to_batch(x), kernel, strides, "SAME", training=True), x)

    def call(self, x, channel_mask):
        if not self.separable:
            frames = dims(x)[1]
            padded = tf.pad(x, [[0, 0], [self.kernel_t - 1, 0], [0, 0], [0, 0], [0, 0]])
            taps = [self.spatial_conv(padded[:, i:i + frames], tf.transpose(self.kernel[i], [0, 1, 3, 2]))
                    for i in range(self.kernel_t)]
            return self.normalize(tf.add_n(taps), 0, channel_mask)
        y = self.normalize(self.spatial_conv(x, self.spatial), 0, channel_mask)
        if self.kernel_t == 1:
            return y
        batch, frames, height, width, channels = dims(y)
        # Causal: kt - 1 zero frames in front, the conv's own padding (one op over [B, T, H*W, C]).
        z = depthwise_conv2d(tf.reshape(y, [batch, frames, height * width, channels]), self.temporal,
                             [1, 1, 1, 1], [[0, 0], [self.kernel_t - 1, 0], [0, 0], [0, 0]], training=True)
        return self.normalize(tf.reshape(z, [batch, frames, height, width, channels]), 1, channel_mask)


class SEBranch(keras.layers.Layer):
    """One SE type's causal squeeze-and-excitation (the stand-alone ``SqueezeExcitation``) over
    masked channels: its hidden width follows the sampled expansion width through ``hidden_mask``."""

    def __init__(self, se_type: str, channels: int, hidden: int, options: ModelOptions, init: SeededInitializers,
                 **kwargs):
        super().__init__(**kwargs)
        self.se_type = se_type
        pooled = 2 * channels if se_type == "2plus3d" else channels
        self.act = activation_fn(options.activation)
        self.gate = activation_fn(options.gating_activation)
        self.reduce_kernel = self.add_weight(name="reduce_kernel", shape=(pooled, hidden),
                                             initializer=init(options.kernel_initializer))
        self.reduce_bias = self.add_weight(name="reduce_bias", shape=(hidden,), initializer="zeros")
        self.expand_kernel = self.add_weight(name="expand_kernel", shape=(hidden, channels),
                                             initializer=init(options.kernel_initializer))
        self.expand_bias = self.add_weight(name="expand_bias", shape=(channels,), initializer="zeros")
        self.built = True

    def call(self, x, hidden_mask):
        spatial = tf.reduce_mean(x, axis=[2, 3], keepdims=True)
        if self.se_type == "2d":
            pooled = spatial
        else:
            # The causal pool: each frame sees the mean over the frames up to it.
            frames = dims(spatial)[1]
            temporal = tf.cumsum(spatial, axis=1) / tf.reshape(tf.range(1, frames + 1, dtype=x.dtype),
                                                               [1, -1, 1, 1, 1])
            pooled = tf.concat([temporal, spatial], axis=-1) if self.se_type == "2plus3d" else temporal
        hidden = self.act(pointwise(pooled, self.reduce_kernel, self.reduce_bias)) * hidden_mask
        return x * self.gate(pointwise(hidden, self.expand_kernel, self.expand_bias))


class SuperLayer(keras.layers.Layer):
    """Layer ``l`` of block ``b`` over every width, kernel and SE choice of the space."""

    def __init__(self, space: SearchSpace, b: int, l: int, in_param: str, options_by_se: dict,
                 init: SeededInitializers, **kwargs):
        super().__init__(**kwargs)
        block = space.blocks[b]
        choices: LayerChoices = block.layers[l]
        self.b, self.l = b, l
        self.in_param, self.out_param = in_param, f"b{b}.filters"
        self.expand_param, self.kernel_param = f"b{b}.l{l}.expand", f"b{b}.l{l}.kernel"
        in_choices = dict((p.name, p.choices) for p in space.params())[in_param]
        self.in_widest, self.out_widest = max(in_choices), max(block.filters)
        # Expansion width and SE hidden width by (block width, expand choice[, SE type]).
        self.expand_widths = np.array([[choices.width(c, f) for c in choices.expand_choices]
                                       for f in block.filters], np.int32)
        self.widest = int(self.expand_widths.max())
        self.stride = block.stride[0] if l == 0 else 1
        options = next(iter(options_by_se.values()))
        self.options = options
        self.epsilon = options.norm_epsilon
        kernel_init, weight = options.kernel_initializer, self.add_weight
        self.expand_kernel = weight(name="expand_kernel", shape=(self.in_widest, self.widest),
                                    initializer=init(kernel_init))
        self.expand_gamma = weight(name="expand_gamma", shape=(self.widest,), initializer="ones")
        self.expand_beta = weight(name="expand_beta", shape=(self.widest,), initializer="zeros")
        self.kernels = [KernelBranch(kernel, self.stride, self.widest, options, init, name=f"{self.name}_kernel{i}")
                        for i, kernel in enumerate(choices.kernel)]
        self.se_types = list(options_by_se)
        self.se_hidden = {t: np.array([[se_hidden(int(e), o) for e in row] for row in self.expand_widths],
                                      np.int32) for t, o in options_by_se.items() if t != "none"}
        self.se = {t: SEBranch(t, self.widest, int(self.se_hidden[t].max()), options_by_se[t], init,
                                name=f"{self.name}_se_{t}")
                   for t in self.se_hidden}
        self.project_kernel = weight(name="project_kernel", shape=(self.widest, self.out_widest),
                                     initializer=init(kernel_init))
        self.project_gamma = weight(name="project_gamma", shape=(self.out_widest,), initializer="ones")
        self.project_beta = weight(name="project_beta", shape=(self.out_widest,), initializer="zeros")
        self.rezero = weight(name="rezero", shape=(), initializer="zeros")
        # A projection wherever the stand-alone layer may have one: striding, or widths that can differ.
        self.always_identity = self.stride == 1 and (l > 0 or set(in_choices) == set(block.filters) == {
            self.out_widest})
        if not self.always_identity:
            self.skip_kernel = weight(name="skip_kernel", shape=(self.in_widest, self.out_widest),
                                      initializer=init(kernel_init))
            self.skip_gamma = weight(name="skip_gamma", shape=(self.out_widest,), initializer="ones")
            self.skip_beta = weight(name="skip_beta", shape=(self.out_widest,), initializer="zeros")
        self.built = True

    def call(self, x, arch: Architecture):
        expand = arch.lookup(self.expand_widths, self.out_param, self.expand_param)
        expand_mask = width_mask(expand, self.widest)
        out_mask = width_mask(arch.value(self.out_param), self.out_widest)
        y = pointwise(x, self.expand_kernel)
        y = normalize_activate(y, self.expand_gamma, self.expand_beta, self.epsilon, self.options.activation)
        y = y * expand_mask
        y = select(arch.index(self.kernel_param), arch.mixed(self.kernel_param),
                   [lambda branch=branch: branch(y, channel_mask=expand_mask) for branch in self.kernels])
        y = self.squeeze_excite(y, arch)
        y = batch_norm(pointwise(y, self.project_kernel), self.project_gamma, self.project_beta, self.epsilon)
        return y * out_mask * self.rezero + self.shortcut(x, arch, out_mask)

    def squeeze_excite(self, y, arch: Architecture):
        def branch(se_type):
            if se_type == "none":
                return lambda: y
            hidden = arch.lookup(self.se_hidden[se_type], self.out_param, self.expand_param)
            return lambda: self.se[se_type](y, hidden_mask=width_mask(hidden, self.se[se_type].reduce_bias.shape[0]))

        if SE_PARAM not in arch.params:
            return branch(self.se_types[0])()
        return select(arch.index(SE_PARAM), arch.mixed(SE_PARAM), [branch(t) for t in self.se_types])

    def shortcut(self, x, arch: Architecture, out_mask):
        if self.always_identity:
            return x
        skip = x
        if self.stride > 1:
            skip = batch_to_frames(tf.nn.avg_pool2d(frames_to_batch(x), 3, self.stride, "SAME"), x)
        projected = batch_norm(pointwise(skip, self.skip_kernel), self.skip_gamma, self.skip_beta,
                               self.epsilon) * out_mask
        if self.stride > 1:
            return projected
        # Equal widths: the stand-alone layer adds its input (beyond its width, x is zero).
        identity = x[..., :self.out_widest] if self.in_widest >= self.out_widest else tf.pad(
            x, [[0, 0]] * 4 + [[0, self.out_widest - self.in_widest]])
        return tf.where(arch.value(self.in_param) == arch.value(self.out_param), identity, projected)


class Head(keras.layers.Layer):
    """Projection (mask) -> the options' average pool -> classifier conv + act (mask) -> logits."""

    def __init__(self, space: SearchSpace, in_widest: int, options: ModelOptions, init: SeededInitializers,
                 **kwargs):
        super().__init__(**kwargs)
        self.project_widest, self.head_widest = max(space.project_filters), max(space.head_filters)
        self.options = options
        self.classifier_act = activation_fn(options.classifier_activation)
        weight = self.add_weight
        self.project_kernel = weight(name="project_kernel", shape=(in_widest, self.project_widest),
                                     initializer=init(options.kernel_initializer))
        self.project_gamma = weight(name="project_gamma", shape=(self.project_widest,), initializer="ones")
        self.project_beta = weight(name="project_beta", shape=(self.project_widest,), initializer="zeros")
        self.head_kernel = weight(name="head_kernel", shape=(self.project_widest, self.head_widest),
                                  initializer=init(options.kernel_initializer))
        self.head_bias = weight(name="head_bias", shape=(self.head_widest,), initializer="zeros")
        # The stand-alone classifier's N(0, 0.01) initialisation.
        self.classifier_kernel = weight(name="classifier_kernel", shape=(self.head_widest, options.num_classes),
                                        initializer=init(keras.initializers.RandomNormal(stddev=0.01)))
        self.classifier_bias = weight(name="classifier_bias", shape=(options.num_classes,), initializer="zeros")
        self.built = True

    def call(self, x, arch: Architecture):
        y = normalize_activate(pointwise(x, self.project_kernel), self.project_gamma, self.project_beta,
                               self.options.norm_epsilon, self.options.activation)
        y = y * width_mask(arch.value("head.project_filters"), self.project_widest)
        # The stand-alone pool ('2d': each frame's own, 'none': each position's); the classifier runs
        # on each pooled vector and its logits are averaged.
        axes = {"3d": [1, 2, 3], "2d": [2, 3], "none": []}[self.options.average_pooling_type]
        pooled = tf.reduce_mean(y, axis=axes, keepdims=True) if axes else y
        hidden = self.classifier_act(pointwise(pooled, self.head_kernel, self.head_bias))
        hidden = hidden * width_mask(arch.value("head.head_filters"), self.head_widest)
        return tf.reduce_mean(pointwise(hidden, self.classifier_kernel, self.classifier_bias), axis=[1, 2, 3])


class Supernet(keras.layers.Layer):
    """Every architecture of ``space``; ``call(clip, sample)`` runs the sampled one.

    Args:
      options_by_se: the stand-alone build options of each SE type the space allows (one entry,
        the fixed type, when it is not searched); every other option is shared.
      seed: the initial weights' (the same in every process).
    """

    def __init__(self, space: SearchSpace, options_by_se: dict[str, ModelOptions], seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.space = space
        options = next(iter(options_by_se.values()))
        init = SeededInitializers(seed)
        self.stem = Stem(space, options, init, name="stem")
        self.blocks = []
        in_param = "stem.filters"
        for b, block in enumerate(space.blocks):
            layers = [SuperLayer(space, b, l, in_param if l == 0 else f"b{b}.filters", options_by_se, init,
                                 name=f"block{b}_layer{l}") for l in range(len(block.layers))]
            self.blocks.append(layers)
            in_param = f"b{b}.filters"
        self.head = Head(space, max(space.blocks[-1].filters), options, init, name="head")
        self.built = True

    def call(self, clip, sample: Sample):
        arch = Architecture(self.space, sample)
        x = self.stem(clip, arch=arch)
        for b, (block, layers) in enumerate(zip(self.space.blocks, self.blocks)):
            x = self.block(x, block.depth, layers, arch, f"b{b}.depth")
        return self.head(x, arch=arch)

    @staticmethod
    def block(x, depths: Sequence[int], layers, arch: Architecture, depth_param: str):
        """The block's output at its sampled depth (layers past it do not run), or with the op
        warm-up's mixture the mean of its outputs at every allowed depth."""
        for layer in layers[:depths[0]]:
            x = layer(x, arch=arch)
        if len(depths) == 1:
            return x

        # One tf.cond per optional layer, each layer traced once (a switch_case over depths, whose
        # mixture branch traces them again, doubled the step's graph and its first-step time).
        weights = tf.where(arch.mixed(depth_param), tf.fill([len(depths)], 1.0 / len(depths)),
                           tf.one_hot(arch.index(depth_param), len(depths)))
        out = weights[0] * x
        for d in range(1, len(depths)):
            deeper = tf.reduce_sum(weights[d:]) > 0
            for layer in layers[depths[d - 1]:depths[d]]:
                x = tf.cond(deeper, lambda layer=layer, x=x: layer(x, arch=arch), lambda x=x: x)
            out += weights[d] * x
        return out
