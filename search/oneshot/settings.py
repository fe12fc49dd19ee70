"""Settings of a one-shot search: the ``oneshot:`` section of a space file, and its input settings.

No TensorFlow here: a driver validates a space file (and fails on a bad section) before anything
is built or trained.

    oneshot:
      steps: 600                    # or epochs: N (of the training clips); default: budget.epochs epochs
      rl_delay: 0.25                # fraction of the steps before the controller learns (TuNAS)
      op_warmup: 0.25               # fraction over which the all-ops mixture's probability decays 1 -> 0
      filter_warmup: 0.25           # the same for the largest-width replacement; both <= rl_delay
      controller_learning_rate: null  # null: TuNAS's 3e-4 x global batch / 256
      controller_lr_growth: 10.0    # after the delay the rate is lr x growth**(step / steps)
      baseline_momentum: 0.95       # EMA of the cross-replica mean reward
      validation_batch_multiple: 4  # reward batch = this x the training batch, per replica
      optimizer: null               # shared weights: rmsprop | sgd | adam | adamw; null: budget.optimizer
      learning_rate: null           # shared weights (cosine decay); null: budget.learning_rate
      log_every: 10                 # steps between log rows (probabilities.csv, on_progress)
      checkpoint_every: 100         # steps between checkpoints (and one at the end)
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping

from movinet.train_config import OPTIMIZERS, TrainConfig
from search.space import SearchSpace, SpaceError

# What the weight-sharing supernet keeps outside: each combination is a supernet run of its own.
INPUT_PARAMS = ("input.resolution", "input.frames", "input.frame_stride")
# TuNAS's controller learning rate per 256 clips of a step's global batch.
CONTROLLER_RATE_PER_256 = 3e-4


class OneShotError(ValueError):
    """A ``oneshot:`` field that cannot work; the message names the field (without the file)."""


@dataclasses.dataclass(frozen=True)
class InputSetting:
    """What stays outside the supernet: the clip every sampled architecture is trained on."""

    resolution: int
    frames: int
    frame_stride: int

    @property
    def key(self) -> str:
        return f"r{self.resolution}_f{self.frames}_s{self.frame_stride}"

    def params(self) -> dict[str, int]:
        """The setting as the input parameters of a point of the space."""
        return dict(zip(INPUT_PARAMS, (self.resolution, self.frames, self.frame_stride)))


@dataclasses.dataclass(frozen=True)
class OneShotSettings:
    """How one supernet and its controller train (TuNAS, Bender et al. 2020, defaults).

    ``steps`` or ``epochs`` (passes over the training clips at the global batch) sets the length;
    with neither, the space's ``budget.epochs``. The controller learns only after ``rl_delay`` of
    the steps, and the op and filter warm-ups end before it (TuNAS refuses warm-ups longer than the
    delay: the controller would learn from all-ops and widest samples). The controller learning
    rate defaults to 3e-4 x global batch / 256 and grows by ``controller_lr_growth`` over the run.
    The shared weights take ``optimizer`` and ``learning_rate`` (cosine decay over the steps), by
    default the budget's.
    """

    steps: int | None = None
    epochs: int | None = None
    rl_delay: float = 0.25
    op_warmup: float = 0.25
    filter_warmup: float = 0.25
    controller_learning_rate: float | None = None
    controller_lr_growth: float = 10.0
    baseline_momentum: float = 0.95
    validation_batch_multiple: int = 4
    optimizer: str | None = None
    learning_rate: float | None = None
    log_every: int = 10
    checkpoint_every: int = 100

    def total_steps(self, num_train: int, global_batch: int, budget_epochs: int) -> int:
        if self.steps is not None:
            return self.steps
        epochs = self.epochs if self.epochs is not None else budget_epochs
        return max(1, epochs * num_train // global_batch)

    def controller_rate(self, global_batch: int) -> float:
        if self.controller_learning_rate is not None:
            return self.controller_learning_rate
        return CONTROLLER_RATE_PER_256 * global_batch / 256

    def weights_recipe(self, budget: Mapping[str, Any]) -> TrainConfig:
        """The budget's training recipe with this section's optimizer and learning rate on top."""
        config = TrainConfig.from_dict(dict(budget))
        changes = {k: v for k, v in (("optimizer", self.optimizer), ("learning_rate", self.learning_rate))
                   if v is not None}
        return dataclasses.replace(config, **changes)


def _fraction(name: str, value, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
            value >= 1 if high_open else value > 1):
        raise OneShotError(f"oneshot.{name}: expected a fraction in [0, 1{')' if high_open else ']'}, got {value!r}")
    return float(value)


def _positive(name: str, value, integer: bool):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise OneShotError(f"oneshot.{name}: expected a positive {'integer' if integer else 'number'}, "
                           f"got {value!r}")
    return value if integer else float(value)


def parse_oneshot(section: Mapping[str, Any] | None) -> OneShotSettings:
    """The validated settings of a ``oneshot:`` section (None or {}: every default).

    Raises OneShotError naming the field ``oneshot.<name>``.
    """
    section = {} if section is None else section
    if not isinstance(section, Mapping):
        raise OneShotError(f"oneshot: expected a mapping, got {type(section).__name__}")
    names = [f.name for f in dataclasses.fields(OneShotSettings)]
    unknown = sorted(set(section) - set(names))
    if unknown:
        raise OneShotError(f"oneshot: unknown field(s) {unknown}; expected {names}")
    if "steps" in section and "epochs" in section:
        raise OneShotError("oneshot.steps: give steps or epochs, not both")
    values: dict[str, Any] = {}
    for name in ("steps", "epochs", "validation_batch_multiple", "log_every", "checkpoint_every"):
        if section.get(name) is not None:
            values[name] = _positive(name, section[name], integer=True)
    for name in ("controller_learning_rate", "learning_rate"):
        if section.get(name) is not None:
            values[name] = _positive(name, section[name], integer=False)
    if "controller_lr_growth" in section:
        values["controller_lr_growth"] = _positive("controller_lr_growth", section["controller_lr_growth"], False)
    values["rl_delay"] = _fraction("rl_delay", section.get("rl_delay", 0.25), high_open=True)
    for name in ("op_warmup", "filter_warmup"):
        values[name] = _fraction(name, section.get(name, min(0.25, values["rl_delay"])), high_open=False)
        if values[name] > values["rl_delay"]:
            raise OneShotError(f"oneshot.{name}: a warm-up of {values[name]} of the steps outlasts the "
                               f"RL delay ({values['rl_delay']}): the controller would learn from "
                               "warm-up samples; make it <= rl_delay")
    values["baseline_momentum"] = _fraction("baseline_momentum", section.get("baseline_momentum", 0.95),
                                            high_open=True)
    if section.get("optimizer") is not None:
        if section["optimizer"] not in OPTIMIZERS:
            raise OneShotError(f"oneshot.optimizer: expected one of {list(OPTIMIZERS)}, "
                               f"got {section['optimizer']!r}")
        values["optimizer"] = section["optimizer"]
    return OneShotSettings(**values)


def oneshot_settings(space: SearchSpace) -> OneShotSettings:
    """The validated one-shot settings of ``space``; raises SpaceError naming the file and field.

    Besides the section itself, checks what the supernet needs of the space: something to
    choose beyond the input, fixed strides, and options it can switch between.
    """
    try:
        settings = parse_oneshot(space.oneshot)
    except OneShotError as err:
        raise SpaceError(f"{space.source}: {err}") from None
    for b, block in enumerate(space.blocks):
        if len(block.stride) > 1:
            raise SpaceError(f"{space.source}: space.blocks[{b}].stride: a one-shot search keeps "
                             f"strides fixed (the supernet's resolution per layer); got {list(block.stride)}")
    for name, choices in space.options.items():
        if len(choices) > 1 and name not in SWITCHED_OPTIONS:
            raise SpaceError(f"{space.source}: space.options.{name}: a one-shot search switches only "
                             f"{list(SWITCHED_OPTIONS)}; give one value")
    if space.options.get("use_positional_encoding", (False,))[0]:
        raise SpaceError(f"{space.source}: space.options.use_positional_encoding: not supported by the "
                         "one-shot supernet (its encoding depends on the masked width)")
    if not any(len(p.choices) > 1 for p in space.params() if p.name not in INPUT_PARAMS):
        raise SpaceError(f"{space.source}: space: nothing to choose: every field besides the input has one "
                         "value, so a one-shot search has no decision to learn")
    return settings


# Model options the supernet can switch between per sample (their layers differ, the rest does not).
SWITCHED_OPTIONS = ("se_type",)


def input_settings(space: SearchSpace) -> list[InputSetting]:
    """Every resolution x frames x frame_stride of ``space``, one supernet run each."""
    return [InputSetting(r, f, s) for r, f, s in itertools.product(space.resolution, space.frames,
                                                                   space.frame_stride)]
