"""Training settings without TensorFlow: ``TrainConfig`` and its checks.

A search driver validates its ``budget`` section with these alone, so it never imports TensorFlow;
``movinet.train`` runs them.
"""

from __future__ import annotations

import dataclasses

from movinet.options import Settings

OPTIMIZERS = ("rmsprop", "sgd", "adam", "adamw")
# "auto": the precision that suits the devices the run trains on (``movinet.devices.auto_precision``).
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class TrainError(ValueError):
    """A training run that cannot start or resume; the message says why and what to change."""


@dataclasses.dataclass
class TrainConfig(Settings):
    """How to train: the optimisation recipe, numerics, distribution, budget and bookkeeping.

    ``weight_decay`` is the official ``l2_weight_decay``: conv kernels get an L2 penalty of half of
    it (the ``tf.nn.l2_loss`` convention). ``warmup_fraction`` of all steps warm the learning rate
    up linearly from 0 (official: 2145 of 85785 steps). ``max_seconds`` stops training once the
    time is spent (checked after every step) and evaluates the model as it is then.
    """

    epochs: int = 10
    optimizer: str = "rmsprop"
    learning_rate: float = 0.1
    warmup_fraction: float = 0.05
    final_learning_rate_fraction: float = 0.0
    momentum: float = 0.9
    rmsprop_rho: float = 0.9
    rmsprop_epsilon: float = 1.0
    label_smoothing: float = 0.1
    weight_decay: float = 3e-5
    clipnorm: float | None = 1.0
    dropout_rate: float = 0.2
    stochastic_depth_drop_rate: float = 0.2
    precision: str = "auto"
    jit_compile: bool = False
    strategy: str = "default"
    tpu_address: str | None = None
    steps_per_epoch: int | None = None
    max_seconds: float | None = None
    init_checkpoint: str | None = None
    keep_checkpoints: int = 2
    log_every_steps: int = 10
    verbose: int = 1
    seed: int = 0

    settings_error, settings_kind = TrainError, "training"

    def __post_init__(self):
        checks = (("optimizer", OPTIMIZERS), ("precision", PRECISIONS), ("strategy", STRATEGIES))
        for field, allowed in checks:
            if getattr(self, field) not in allowed:
                raise TrainError(f"{field}={getattr(self, field)!r}: expected one of {list(allowed)}")
        if self.epochs < 1:
            raise TrainError(f"epochs={self.epochs}: expected at least 1")
        if self.learning_rate <= 0:
            raise TrainError(f"learning_rate={self.learning_rate}: expected a positive number")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise TrainError(f"warmup_fraction={self.warmup_fraction}: expected a fraction in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise TrainError(f"label_smoothing={self.label_smoothing}: expected a fraction in [0, 1)")
        if self.clipnorm is not None and self.clipnorm <= 0:
            raise TrainError(f"clipnorm={self.clipnorm}: expected a positive number, or None for no clipping")
