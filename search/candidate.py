"""Candidates: one point of a search space as a concrete spec, clip and build options.

The cost filter lives here too: a candidate's multiply-adds come from ``movinet.cost`` on the
candidate's own clip, in stream mode, before anything is built or trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from typing import Any, Mapping

from movinet.cost import Cost, cost
from movinet.spec import (STREAM_KEYS, BlockSpec, HeadSpec, LayerSpec, ModelSpec, StemSpec,
                          spec_from_dict)
from search.space import SearchSpace, SpaceError, parse_kernel

MODE = "stream"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A spec to build in stream mode, the clip to train it on, and build-option overrides."""

    spec: ModelSpec
    frames: int
    resolution: int
    frame_stride: int
    options: Mapping[str, Any]          # resolve_options overrides beyond what spec.stream holds
    params: Mapping[str, Any]           # the point of the space it was decoded from

    @property
    def key(self) -> str:
        """Identity of what would be trained: equal keys, equal models on equal clips."""
        body = {k: v for k, v in self.spec.to_dict().items() if k != "name"}
        text = json.dumps([body, self.frames, self.resolution, self.frame_stride, dict(self.options)],
                          sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def cost(self, num_classes: int | None = None) -> Cost:
        overrides = dict(self.options)
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        return cost(self.spec, MODE, frames=self.frames, resolution=self.resolution, **overrides)

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "frames": self.frames, "resolution": self.resolution,
                "frame_stride": self.frame_stride, "options": dict(self.options),
                "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Candidate":
        return cls(spec=spec_from_dict(data["spec"], "<candidate>"), frames=data["frames"],
                   resolution=data["resolution"], frame_stride=data["frame_stride"],
                   options=dict(data["options"]), params=dict(data["params"]))


def decode(space: SearchSpace, params: Mapping[str, Any]) -> Candidate:
    """The candidate a point of ``space`` stands for (see ``SearchSpace.params`` for the names)."""
    blocks = []
    for b, block in enumerate(space.blocks):
        filters, depth, stride = params[f"b{b}.filters"], params[f"b{b}.depth"], params[f"b{b}.stride"]
        layers = []
        for l in range(depth):
            choices = block.layers[l]
            layers.append(LayerSpec(expand=choices.width(params[f"b{b}.l{l}.expand"], filters),
                                    kernel=parse_kernel(params[f"b{b}.l{l}.kernel"]),
                                    stride=(1, stride, stride) if l == 0 else (1, 1, 1)))
        blocks.append(BlockSpec(filters=filters, layers=tuple(layers)))
    options = {key[len("options."):]: value for key, value in params.items() if key.startswith("options.")}
    stream = {key: options.pop(key) for key in STREAM_KEYS if key in options}
    spec = ModelSpec(
        name=space.name,
        stem=StemSpec(filters=params["stem.filters"], kernel=space.stem_kernel, stride=space.stem_stride),
        blocks=tuple(blocks),
        head=HeadSpec(project_filters=params["head.project_filters"],
                      head_filters=params["head.head_filters"]),
        stream=stream,
    )
    candidate = Candidate(spec=spec, frames=params["input.frames"], resolution=params["input.resolution"],
                          frame_stride=params["input.frame_stride"], options=options, params=dict(params))
    return dataclasses.replace(candidate, spec=spec.replace(name=f"{space.name}-{candidate.key}"))


def candidate_macs(space: SearchSpace, candidate: Candidate) -> int:
    return candidate.cost(space.num_classes).macs


def check_feasible(space: SearchSpace, samples: int = 2000) -> float:
    """Fails before anything runs when no sampled point of ``space`` meets the cost window.

    Tries the all-smallest and all-largest points and ``samples`` random ones; returns the
    fraction of them inside the window (an estimate of how many proposals the filter keeps).
    """
    rng = random.Random(space.settings.seed)
    points = space.extreme_points() + [space.sample(lambda p: rng.choice(p.choices))
                                       for _ in range(samples)]
    macs = [candidate_macs(space, decode(space, point)) for point in points]
    accepted = sum(space.objective.accepts(m) for m in macs)
    if not accepted:
        low, high = space.objective.bounds
        raise SpaceError(
            f"{space.source}: objective: no candidate meets the cost window: target_macs "
            f"{space.objective.target_macs:,.0f} +- {space.objective.window:.0%} is [{low:,.0f}, "
            f"{high:,.0f}] multiply-adds, but {len(points)} points of the space (its smallest and "
            f"largest included) cost {min(macs):,} to {max(macs):,}")
    return accepted / len(points)
