"""A proxy for a member's one-shot search: fewer frames and a lower resolution, the target scaled alike.

    member space (its clip F x R, target T) --proxy(f, r)--> the same choices on f x r,
        target T x macs(reference, f x r) / macs(reference, F x R)
    --one-shot search--> found spec --reported at F x R, with its cost there

The factor is the ratio of the member's reference architecture's multiply-adds at the two clips
(``movinet.cost``), not an assumed law: strides round each layer's size, and the classifier's cost
does not grow with frames. The reference is the member's target spec (e.g. A0 for member a0); a
member with a numeric target uses the largest point of its space.
"""

from __future__ import annotations

import dataclasses

from family.scaling import TARGET_NUM_CLASSES, Family, FamilyError, scale_space
from movinet.cost import cost
from movinet.spec import ModelSpec, load_spec
from search.candidate import decode
from search.oneshot.settings import InputSetting
from search.space import SearchSpace


@dataclasses.dataclass(frozen=True)
class Proxy:
    """The clip a proxy search trains on: ``frames`` frames of ``resolution`` pixels."""

    frames: int
    resolution: int


def reference_spec(family: Family, member_name: str, space: SearchSpace) -> ModelSpec:
    """The architecture whose cost ratio scales the member's target to the proxy clip."""
    kind, value = next(iter(family.member(member_name).target.items()))
    if kind == "spec":
        return load_spec(value)
    return decode(space, space.extreme_points()[1]).spec


def clip_macs(spec: ModelSpec, frames: int, resolution: int) -> int:
    """Multiply-adds of ``spec`` on a clip, counted as the family's targets are (``target_macs``)."""
    return cost(spec, "base", frames=frames, resolution=resolution, num_classes=TARGET_NUM_CLASSES).macs


def proxy_space(family: Family, member_name: str, proxy: Proxy) -> tuple[SearchSpace, InputSetting]:
    """The member's space on the proxy clip with its target scaled alike, and the member's real
    input (where the found spec is reported)."""
    space = scale_space(family, member_name)
    real = InputSetting(resolution=space.resolution[0], frames=space.frames[0], frame_stride=space.frame_stride[0])
    where = f"{family.source}: members.{member_name}: proxy"
    if len(space.frames) > 1 or len(space.resolution) > 1 or len(space.frame_stride) > 1:
        raise FamilyError(f"{where}: the member's space has several clips; a proxy stands for exactly one")
    if not 0 < proxy.frames <= real.frames or not 0 < proxy.resolution <= real.resolution:
        raise FamilyError(f"{where}: {proxy.frames} frames x {proxy.resolution} px is not a smaller clip than the "
                          f"member's {real.frames} x {real.resolution}")
    reference = reference_spec(family, member_name, space)
    factor = (clip_macs(reference, proxy.frames, proxy.resolution)
              / clip_macs(reference, real.frames, real.resolution))
    objective = dataclasses.replace(space.objective, target_macs=space.objective.target_macs * factor)
    proxied = dataclasses.replace(space, frames=(proxy.frames,), resolution=(proxy.resolution,),
                                  objective=objective,
                                  source=f"{space.source} on a {proxy.frames}x{proxy.resolution} proxy "
                                         f"(target x {factor:.4f}, from {reference.name})")
    return proxied, real
