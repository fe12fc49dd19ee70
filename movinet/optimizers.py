"""Keras optimizers whose per-variable update is one TensorFlow training op.

Keras 3 writes each variable's update as a chain of element-wise ops (RMSprop with momentum:
about a dozen ops and three assignments per variable). An A0 has ~250 trainable variables, so
the optimizer alone put ~4,500 ops into every training step: a third of the graph, traced at the
start of every run and executed as that many small kernels at every step. TensorFlow's fused
``ResourceApply*`` kernels compute the same update in one op per variable: a smaller graph to
trace at the start of a run and fewer kernels to launch at every step
(``python benchmarks/start_bench.py`` times the start of a run).

The slots, their names and the checkpoint layout are the Keras optimizers' own (these are
subclasses that change only ``update_step``), so checkpoints move between the two freely.
Variants the fused kernels do not cover (centered RMSprop, AMSGrad, RMSprop or SGD without
momentum) fall back to the Keras update.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _constant(value, variable):
    return tf.cast(value, variable.dtype)


@keras.saving.register_keras_serializable(package="movinet")
class FusedRMSprop(keras.optimizers.RMSprop):
    """``keras.optimizers.RMSprop`` whose update with momentum is ``ResourceApplyRMSProp``:
    ms = rho ms + (1 - rho) g^2; mom = momentum mom + lr g / sqrt(ms + epsilon); var -= mom."""

    def update_step(self, gradient, variable, learning_rate):
        if self.centered or not self.momentum > 0:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyRMSProp(
            var=variable.handle, ms=self._velocities[index].handle, mom=self._momentums[index].handle,
            lr=_constant(learning_rate, variable), rho=_constant(self.rho, variable),
            momentum=_constant(self.momentum, variable), epsilon=_constant(self.epsilon, variable),
            grad=_constant(gradient, variable))


@keras.saving.register_keras_serializable(package="movinet")
class FusedSGD(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` whose update with momentum is ``ResourceApplyKerasMomentum``:
    m = momentum m - lr g; var += m (Nesterov: var += momentum m - lr g)."""

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=self.momentums[self._get_variable_index(variable)].handle,
            lr=_constant(learning_rate, variable), grad=_constant(gradient, variable),
            momentum=_constant(self.momentum, variable), use_nesterov=self.nesterov)


class _FusedAdamUpdate:
    """The Adam update as ``ResourceApplyAdam``, bias correction included:
    var -= lr sqrt(1 - beta_2^t) / (1 - beta_1^t) m / (sqrt(v) + epsilon)."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        step = _constant(self.iterations + 1, variable)
        beta_1, beta_2 = _constant(self.beta_1, variable), _constant(self.beta_2, variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=_constant(learning_rate, variable), beta1=beta_1, beta2=beta_2,
            epsilon=_constant(self.epsilon, variable), grad=_constant(gradient, variable))


@keras.saving.register_keras_serializable(package="movinet")
class FusedAdam(_FusedAdamUpdate, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with the fused update."""


@keras.saving.register_keras_serializable(package="movinet")
class FusedAdamW(_FusedAdamUpdate, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with the fused update (Keras applies the decoupled weight decay
    before ``update_step``, as for its own AdamW)."""


# Keras's names of the optimizers above (``keras.optimizers.get`` takes them in any case).
BY_NAME = {"rmsprop": FusedRMSprop, "sgd": FusedSGD, "adam": FusedAdam, "adamw": FusedAdamW}


def fused(identifier):
    """``identifier`` as ``keras.Model.compile`` takes it, with a name of a Keras optimizer that
    has a fused counterpart here ("adam", "RMSprop", ...) turned into that one, of Keras's
    defaults; anything else (an optimizer object, a config, another name) is returned as given."""
    if isinstance(identifier, str) and identifier.lower() in BY_NAME:
        return BY_NAME[identifier.lower()]()
    return identifier
