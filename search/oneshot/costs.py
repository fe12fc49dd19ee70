"""Exact multiply-adds of a sampled architecture, in the graph, from per-layer tables of ``movinet.cost``.

At a fixed clip a layer's multiply-adds depend only on its own choices and its input width, so the
cost of any point is a sum of table entries (TuNAS's linear cost model, here exact):

    stem[stem width] + sum over layers l of active(l) * layer_l[in width, width, expand, kernel, se]
      + head[last width, project] + classifier_head[project, head] + classifier[head]

Each entry is ``movinet.cost`` of a decoded point of the space (``search.candidate``), read by layer
name, so the sum equals the cost the multi-trial search filters candidates by.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping

import numpy as np

from search.candidate import decode
from search.oneshot.settings import InputSetting
from search.space import Param, SearchSpace

SE_PARAM = "options.se_type"


@dataclasses.dataclass(frozen=True)
class CostTerm:
    """One layer's multiply-adds for every combination of the parameters it depends on."""

    layer: str                     # the LayerCost name in movinet.cost
    params: tuple[str, ...]        # the table's axes, in order
    table: np.ndarray              # int64, one axis per param (its choices)
    guard: Param | None = None     # counted only where this layer is active (the guard's depth)


def base_point(space: SearchSpace, setting: InputSetting) -> dict:
    """A point with every layer present (deepest depths) and first choices elsewhere, at ``setting``."""
    clip = setting.params()

    def choose(param: Param):
        if param.name in clip:
            return clip[param.name]
        return max(param.choices) if param.name.endswith(".depth") else param.choices[0]

    return space.sample(choose)


def _term(space: SearchSpace, point: dict, layer: str, names: tuple[str, ...], guard: Param | None,
          params: Mapping[str, Param]) -> CostTerm:
    names = tuple(name for name in names if name in params)
    shape = tuple(len(params[name].choices) for name in names)
    table = np.zeros(shape, np.int64)
    for index in itertools.product(*(range(n) for n in shape)):
        values = dict(point)
        values.update({name: params[name].choices[i] for name, i in zip(names, index)})
        layers = decode(space, values).cost(space.num_classes).layers
        table[index] = next(entry.macs for entry in layers if entry.name == layer)
    return CostTerm(layer, names, table, guard)


def cost_terms(space: SearchSpace, setting: InputSetting) -> tuple[CostTerm, ...]:
    """The per-layer tables of ``space`` at ``setting``; their gathered sum is a point's macs."""
    params = {param.name: param for param in space.params()}
    point = base_point(space, setting)
    terms = [_term(space, point, "stem", ("stem.filters",), None, params)]
    previous = "stem.filters"
    for b, block in enumerate(space.blocks):
        for l in range(len(block.layers)):
            expand, kernel = params[f"b{b}.l{l}.expand"], params[f"b{b}.l{l}.kernel"]
            width_in = previous if l == 0 else f"b{b}.filters"
            names = (width_in, f"b{b}.filters", expand.name, kernel.name, SE_PARAM)
            guard = expand if expand.depth_param is not None else None
            terms.append(_term(space, point, f"block{b}_layer{l}", names, guard, params))
        previous = f"b{b}.filters"
    terms.append(_term(space, point, "head", (previous, "head.project_filters"), None, params))
    terms.append(_term(space, point, "classifier_head", ("head.project_filters", "head.head_filters"),
                       None, params))
    terms.append(_term(space, point, "classifier", ("head.head_filters",), None, params))
    return tuple(terms)


def graph_macs(terms: tuple[CostTerm, ...], index: Mapping, active: Mapping):
    """int64 multiply-adds of a sample: ``index`` {param: int32 choice index}, ``active`` {param: bool}."""
    import tensorflow as tf

    total = tf.constant(0, tf.int64)
    for term in terms:
        entry = tf.gather_nd(tf.constant(term.table), tf.stack([index[name] for name in term.params])) \
            if term.params else tf.constant(int(term.table), tf.int64)
        if term.guard is not None:
            entry = entry * tf.cast(active[term.guard.name], tf.int64)
        total += entry
    return total
