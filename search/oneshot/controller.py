"""The controller: one categorical distribution per decision of the space, trained by REINFORCE.

A decision is a parameter of the space (``SearchSpace.params``) with more than one choice, besides
the input, which stays outside the supernet. Depth is one categorical per block (the space's own
``b{b}.depth``), not TuNAS's independent per-layer skips: every sample, and the argmax, is then a
point of the space, whose per-layer choices (given by position) keep their meaning.

Sampling is stateless, from ``(seed, step, replica, decision)``, so each replica draws its own
architecture, a resumed run draws the same ones, and no random state needs a checkpoint. TuNAS's
warm-ups (Bender et al. 2020): with probability ``p_ops`` an op decision (kernel, depth, option)
becomes the uniform mixture of its choices, and with probability ``p_filters`` a width decision
its widest choice.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from search.oneshot.settings import INPUT_PARAMS, InputSetting
from search.space import Param, SearchSpace

# Width decisions (TuNAS's FILTERS_TAG): warmed up by their widest choice; the rest are ops.
WIDTH_SUFFIXES = (".filters", ".expand", ".project_filters", ".head_filters")


@dataclasses.dataclass(frozen=True)
class Decision:
    param: Param

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def choices(self) -> tuple:
        return self.param.choices

    @property
    def is_width(self) -> bool:
        return self.name.endswith(WIDTH_SUFFIXES)

    @property
    def widest(self) -> int:
        return int(np.argmax(self.choices)) if self.is_width else 0


def space_decisions(space: SearchSpace) -> tuple[Decision, ...]:
    return tuple(Decision(p) for p in space.params() if p.name not in INPUT_PARAMS and len(p.choices) > 1)


@dataclasses.dataclass
class Sample:
    """One architecture in the graph: every parameter's choice index (fixed ones 0), which op
    decisions are the uniform mixture, and which parameters are active."""

    index: dict[str, tf.Tensor]
    mixed: dict[str, tf.Tensor]
    active: dict[str, tf.Tensor]


class Controller(keras.layers.Layer):
    """Logits per decision (zeros at init: uniform), sampling and the argmax point."""

    def __init__(self, space: SearchSpace, **kwargs):
        super().__init__(**kwargs)
        self.space = space
        self.params = tuple(p for p in space.params() if p.name not in INPUT_PARAMS)
        self.decisions = space_decisions(space)
        self.logits = [self.add_weight(name=d.name.replace(".", "_"), shape=(len(d.choices),),
                                       initializer="zeros") for d in self.decisions]
        self.built = True

    def sample(self, seed, step, replica, p_ops, p_filters) -> Sample:
        """A sample for ``replica`` at ``step`` (int tensors) under warm-up probabilities."""
        base = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(tf.stack([tf.cast(seed, tf.int64), 0]), step), replica)
        index, mixed = {}, {}
        for i, (decision, logits) in enumerate(zip(self.decisions, self.logits)):
            key = tf.random.experimental.stateless_fold_in(base, i)
            choice = tf.cast(tf.random.stateless_categorical(logits[None], 1, seed=key)[0, 0], tf.int32)
            warm = tf.random.stateless_uniform([], seed=tf.random.experimental.stateless_fold_in(key, 1))
            if decision.is_width:
                choice = tf.where(warm < p_filters, decision.widest, choice)
            else:
                mixed[decision.name] = warm < p_ops
            index[decision.name] = choice
        for param in self.params:
            index.setdefault(param.name, tf.constant(0, tf.int32))
            mixed.setdefault(param.name, tf.constant(False))
        return Sample(index, mixed, self.active(index))

    def fixed(self, index: Mapping[str, tf.Tensor]) -> Sample:
        """The architecture of ``index`` as a sample with no warm-up mixture."""
        return Sample(dict(index), {name: tf.constant(False) for name in index}, self.active(index))

    def log_prob(self, index: Mapping[str, tf.Tensor], active: Mapping[str, tf.Tensor]):
        """log pi of a sample, counting only active decisions (a layer past its block's depth was
        not chosen, so its kernel and width are not either)."""
        return tf.add_n([tf.where(active[d.name], tf.nn.log_softmax(logits)[index[d.name]], 0.0)
                         for d, logits in zip(self.decisions, self.logits)])

    def active(self, index: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Whether each parameter counts: a layer's choices only below its block's sampled depth."""
        depths = {p.name: tf.gather(tf.constant(p.choices), index[p.name])
                  for p in self.params if p.name.endswith(".depth")}
        return {p.name: (tf.constant(True) if p.depth_param is None else depths[p.depth_param] > p.layer)
                for p in self.params}

    def entropy(self) -> tf.Tensor:
        """The sum of every decision's entropy (nats); 0 once each is certain."""
        return tf.add_n([-tf.reduce_sum(tf.nn.softmax(l) * tf.nn.log_softmax(l)) for l in self.logits])

    def probabilities(self) -> dict[str, list[float]]:
        return {d.name: tf.nn.softmax(l).numpy().tolist() for d, l in zip(self.decisions, self.logits)}

    def point(self, choice: Mapping[str, int], setting: InputSetting) -> dict[str, Any]:
        """The point of the space at ``setting`` that choice indices stand for (parameters left
        out: their first choice; layers past a block's depth drop out, as in ``SearchSpace.sample``)."""
        clip = setting.params()
        return self.space.sample(lambda p: clip[p.name] if p.name in clip else p.choices[int(choice.get(p.name, 0))])

    def argmax_point(self, setting: InputSetting) -> dict[str, Any]:
        """The most likely architecture (independent categoricals: the per-decision argmax is the
        joint mode)."""
        return self.point({d.name: int(np.argmax(l.numpy())) for d, l in zip(self.decisions, self.logits)},
                          setting)
