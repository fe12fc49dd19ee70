"""Batch-norm folding: a BN in inference is an affine map per channel, which the convolution
before it absorbs into its kernel and a bias (one op less per layer and frame).

The layers fold themselves (``fold()``) with these helpers; ``movinet.model.fold_batch_norm``
makes a folded copy of a whole model. A folded layer computes inference only.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def batch_norm_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) with ``bn(x) == x * scale + offset`` in inference, in float64."""
    variance = np.asarray(bn.moving_variance.numpy(), np.float64)
    scale = 1.0 / np.sqrt(variance + bn.epsilon)
    if bn.scale:
        scale = scale * np.asarray(bn.gamma.numpy(), np.float64)
    offset = -np.asarray(bn.moving_mean.numpy(), np.float64) * scale
    if bn.center:
        offset = offset + np.asarray(bn.beta.numpy(), np.float64)
    return scale, offset


def folded_constants(kernel, scale, bias, channel_axis: int = -1) -> tuple[tf.Tensor, tf.Tensor]:
    """float32 constants of ``kernel`` scaled per output channel (along ``channel_axis``) and of ``bias``."""
    kernel = np.asarray(kernel, np.float64)
    scale = np.reshape(scale, [-1 if axis == channel_axis % kernel.ndim else 1 for axis in range(kernel.ndim)])
    return (tf.constant((kernel * scale).astype(np.float32)),
            tf.constant(np.asarray(bias, np.float64).astype(np.float32)))


class FoldedError(ValueError):
    """A batch-norm-folded (inference-only) layer was asked to train."""


def check_not_training(layer, training):
    """Raises FoldedError when a folded ``layer`` is called in training."""
    if training:
        raise FoldedError(f"{layer.name} has its batch norm folded for inference; train the unfolded model")
