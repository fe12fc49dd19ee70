"""Compound scaling: one base search space and per-member coefficients -> a search space per member.

MoViNets (arXiv 2103.11511) search A0-A5 in copies of one base space scaled, as in EfficientNet,
by depth, width, input resolution and frame rate, each copy with its own cost target.
Here the base is a search space file (``search.space`` format) and a family file names the members::

    name: movinet                              # scaled spaces are called <name>_<member>
    base: {space: base_space.yaml, fps: 5}     # path relative to this file; frame rate of its clip
    members:
      a0:
        coefficients: {depth: 0.6, width: 0.74, resolution: 0.768, frame_rate: 1.0}
        input: {frames: 50, resolution: 172, fps: 5}   # optional: checked against the scaled clip
        target: {spec: a0}                     # or {gmacs: 2.7} or {macs: 2.63e9}

Scaling one member (every rule in :func:`scale_space`)::

    filters, expand widths   w -> w * width, to the nearest multiple of 8 (never 10% down)
    depth range [lo, hi]     -> [round(lo * depth), round(hi * depth)]; layer l keeps the base
                                layer l's choices, layers past the base's deepest repeat its last
    resolution               r -> round(r * resolution)
    frames, frame stride     f -> round(f * frame_rate), s -> max(1, round(s / frame_rate))
                                (same clip duration, sampled frame_rate times as often)
    expand ratios, kernels, strides, the classifier's hidden width: unchanged
    (round: to the nearest integer, halves up; a width that rounds below 8 or a depth below 1
    is an error naming the member and the field, not a silent clamp)

The target is the member's multiply-adds: those of a named spec on the member's clip (base mode, as
published), or a number. The result is an ordinary search space that ``search.run_search`` runs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Mapping

import yaml

from movinet.cost import cost, make_divisible
from movinet.spec import SpecDumper, SpecError, SpecReader, load_spec, read_yaml
from search.space import BlockChoices, LayerChoices, SearchSpace, load_space, space_to_dict

COEFFICIENTS = ("depth", "width", "resolution", "frame_rate")
TARGET_KINDS = ("spec", "gmacs", "macs")
# Published multiply-adds are counted with the 600-class Kinetics classifier.
TARGET_NUM_CLASSES = 600


class FamilyError(SpecError):
    """A family file that cannot be scaled or built; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class Coefficients:
    depth: float = 1.0
    width: float = 1.0
    resolution: float = 1.0
    frame_rate: float = 1.0


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a family: how its space is scaled from the base, and its cost target."""

    name: str
    coefficients: Coefficients
    target: Mapping[str, object]            # exactly one of spec / gmacs / macs
    input: Mapping[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    base: SearchSpace
    base_fps: float
    members: Mapping[str, Member]
    source: str = "<family>"

    def member(self, name: str) -> Member:
        if name not in self.members:
            raise FamilyError(f"{self.source}: members: no member {name!r}; the family has {list(self.members)}")
        return self.members[name]


def default_family_path() -> Path:
    return Path(__file__).resolve().parent.parent / "specs" / "family" / "coefficients.yaml"


class FamilyReader(SpecReader):
    """SpecReader for family and ensemble files: its errors are FamilyErrors."""

    def fail(self, path: str, message: str):
        raise FamilyError(f"{self.source}: {path}: {message}")

    def positive_number(self, value, path: str) -> float:
        if isinstance(value, str):                  # YAML 1.1 reads 2.6e9 (no sign, no dot) as text
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            self.fail(path, f"expected a positive number, got {value!r}")
        return float(value)


def load_family(path: "str | Path | None" = None) -> Family:
    """Reads a family file (default ``specs/family/coefficients.yaml``) and its base space."""
    path = Path(path or default_family_path())
    return family_from_dict(read_yaml(path, "family", FamilyError), source=str(path), folder=path.parent)


def family_from_dict(data: Mapping, source: str = "<family>", folder: "str | Path" = ".") -> Family:
    r = FamilyReader(source)
    r.mapping(data, "", ("name", "base", "members"))
    if not isinstance(data["name"], str) or not data["name"] or "/" in data["name"]:
        r.fail("name", f"expected a non-empty string without '/', got {data['name']!r}")
    base = r.mapping(data["base"], "base", ("space", "fps"))
    base_path = Path(folder) / str(base["space"])
    if not base_path.exists():
        r.fail("base.space", f"no such search space file {base_path}")
    members = data["members"]
    if not isinstance(members, Mapping) or not members:
        r.fail("members", "expected a mapping of member names to their coefficients and targets")
    family = Family(name=data["name"], base=load_space(base_path),
                    base_fps=r.positive_number(base["fps"], "base.fps"),
                    members={str(name): _member(r, str(name), value) for name, value in members.items()},
                    source=source)
    for member in family.members.values():
        _check_input(r, family, member)
        scale_space(family, member.name)              # fails here, naming the member, on a bad scale
    return family


def _member(r: FamilyReader, name: str, data) -> Member:
    path = f"members.{name}"
    r.mapping(data, path, ("coefficients", "target"), ("input",))
    given = r.mapping(data["coefficients"], f"{path}.coefficients", (), COEFFICIENTS)
    coefficients = Coefficients(**{key: r.positive_number(value, f"{path}.coefficients.{key}")
                                   for key, value in given.items()})
    target = data["target"]
    if not isinstance(target, Mapping) or len(target) != 1 or next(iter(target)) not in TARGET_KINDS:
        r.fail(f"{path}.target", f"expected one of {{spec: NAME}}, {{gmacs: N}}, {{macs: N}}, got {target!r}")
    kind, value = next(iter(target.items()))
    if kind == "spec":
        try:
            load_spec(value)
        except SpecError as err:
            r.fail(f"{path}.target.spec", str(err))
    else:
        value = r.positive_number(value, f"{path}.target.{kind}")
    clip = None
    if data.get("input") is not None:
        clip = r.mapping(data["input"], f"{path}.input", (), ("frames", "resolution", "fps"))
        clip = {key: r.positive_number(v, f"{path}.input.{key}") for key, v in clip.items()}
    return Member(name=name, coefficients=coefficients, target={kind: value}, input=clip)


def _check_input(r: FamilyReader, family: Family, member: Member) -> None:
    """The clip a file states for a member must be the one its coefficients give."""
    if not member.input:
        return
    frames, resolution, _ = scaled_clip(family.base, member.coefficients)
    scaled = {"frames": frames, "resolution": resolution,
              "fps": family.base_fps * member.coefficients.frame_rate}
    for key, stated in member.input.items():
        if stated != scaled[key] and not (key == "fps" and math.isclose(stated, scaled[key], rel_tol=0.01)):
            r.fail(f"members.{member.name}.input.{key}",
                   f"{stated:g}, but the coefficients scale the base clip to {scaled[key]:g}")


def scale_width(width: int, coefficient: float, field: str) -> int:
    """``width * coefficient`` to the nearest multiple of 8; below 8 is an error, not a clamp."""
    value = width * coefficient
    if value < 4:                                   # would round to 0 channels
        raise FamilyError(f"{field}: width coefficient {coefficient:g} scales {width} channels to "
                          f"{value:.2f}, a width below 8")
    return make_divisible(value, 8)


def _round(value: float) -> int:
    """To the nearest integer, halves up (Python's round() sends halves to the even neighbour)."""
    return math.floor(value + 0.5)


def scale_depth(depth: int, coefficient: float, field: str) -> int:
    scaled = _round(depth * coefficient)
    if scaled < 1:
        raise FamilyError(f"{field}: depth coefficient {coefficient:g} scales {depth} layers to "
                          f"{depth * coefficient:.2f}, a depth below 1")
    return scaled


def scaled_clip(base: SearchSpace, c: Coefficients) -> tuple[int, int, int]:
    """(frames, resolution, frame stride) of the member's first clip choice."""
    frames, resolution, stride = _scaled_inputs(base, c)
    return frames[0], resolution[0], stride[0]


def _scaled_inputs(base: SearchSpace, c: Coefficients):
    frames = _unique(max(1, _round(f * c.frame_rate)) for f in base.frames)
    resolution = _unique(max(1, _round(r * c.resolution)) for r in base.resolution)
    stride = _unique(max(1, _round(s / c.frame_rate)) for s in base.frame_stride)
    return frames, resolution, stride


def _unique(values) -> tuple:
    return tuple(dict.fromkeys(values))


def target_macs(family: Family, member: Member) -> float:
    """The member's cost target in multiply-adds on its own clip."""
    kind, value = next(iter(member.target.items()))
    if kind == "spec":
        frames, resolution, _ = scaled_clip(family.base, member.coefficients)
        return float(cost(load_spec(value), "base", frames=frames, resolution=resolution,
                          num_classes=TARGET_NUM_CLASSES).macs)
    return float(value) * (1e9 if kind == "gmacs" else 1.0)


def scale_space(family: Family, member_name: str) -> SearchSpace:
    """The base space scaled by one member's coefficients, with the member's cost target."""
    member = family.member(member_name)
    base, c = family.base, member.coefficients
    where = f"{family.source}: members.{member.name}.coefficients"

    def widths(values, field):
        return _unique(scale_width(v, c.width, f"{where}: {field}") for v in values)

    stem_filters = widths(base.stem_filters, "space.stem.filters")
    blocks = []
    for b, block in enumerate(base.blocks):
        field = f"space.blocks[{b}]"
        depth = tuple(range(scale_depth(block.depth[0], c.depth, f"{where}: {field}.depth"),
                            scale_depth(block.depth[-1], c.depth, f"{where}: {field}.depth") + 1))
        layers = []
        for l in range(depth[-1]):
            layer = block.layers[min(l, len(block.layers) - 1)]
            expand = widths(layer.expand, f"{field}.layers[{l}].expand") if layer.expand else ()
            layers.append(LayerChoices(expand=expand, expand_ratio=layer.expand_ratio, kernel=layer.kernel))
        blocks.append(BlockChoices(filters=widths(block.filters, f"{field}.filters"), depth=depth,
                                   stride=block.stride, layers=tuple(layers)))
    frames, resolution, stride = _scaled_inputs(base, c)
    objective = dataclasses.replace(base.objective, target_macs=target_macs(family, member))
    return dataclasses.replace(
        base, name=f"{family.name}_{member.name}", resolution=resolution, frames=frames, frame_stride=stride,
        stem_filters=stem_filters, blocks=tuple(blocks),
        project_filters=widths(base.project_filters, "space.head.project_filters"),
        objective=objective, source=f"<{family.name} family, member {member.name}, from {base.source}>")


def write_spaces(family: Family, out_dir: "str | Path", members=None) -> dict[str, Path]:
    """Writes ``<out_dir>/<member>.yaml`` for each member (all by default); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in members or family.members:
        space = scale_space(family, name)
        path = out_dir / f"{name}.yaml"
        header = (f"# {family.name} family member {name}: {Path(family.base.source).name} scaled by "
                  f"{dataclasses.asdict(family.member(name).coefficients)}\n")
        path.write_text(header + yaml.dump(_compact(space_to_dict(space)), Dumper=SpecDumper, sort_keys=False,
                                           width=120))
        written[name] = path
    return written


def _compact(data: dict) -> dict:
    """A block whose layers all offer the same choices states them once, at block level."""
    for block in data["space"]["blocks"]:
        layers = block["layers"]
        if all(layer == layers[0] for layer in layers):
            block.update(block.pop("layers")[0])
    return data
