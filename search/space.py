"""Search spaces: a YAML file of architecture choices, a cost target and how to search them.

The file format, field by field, is documented in docs/search.md (its one home); the demo is
``specs/spaces/demo.yaml``. A space is a set of MoViNet specs (``movinet.spec``) plus the clip each
is trained on, written as choices per field; a search samples points of it, keeps those whose
multiply-adds lie in the cost window, and trains them (MoViNets, arXiv 2103.11511, Sec. 3.1, which
searches with TuNAS). ``space_from_dict`` validates a file into a frozen ``SearchSpace``, with errors
that name the file and the field path; ``params`` flattens it into the categorical parameters the
samplers draw, a layer's parameters active only below its block's sampled depth; the ``data`` and
``budget`` sections pass through to the trainer unchecked here (``search.training`` checks them).

``search.algorithm: oneshot`` trains one weight-sharing supernet per input setting with a TuNAS
controller (``search.oneshot``) instead of training candidates one by one; ``search.workers`` sets
its data-parallel workers (``search.resources`` is then per worker), and the ``oneshot:`` section's
fields and defaults are those of ``search.oneshot.settings.OneShotSettings``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import yaml

from movinet.cost import make_divisible
from movinet.options import ModelOptions
from movinet.spec import ModelSpec, SpecError, SpecReader, Triple, read_yaml

ALGORITHMS = ("random", "grid", "tpe", "multi_objective", "oneshot")
SCHEDULERS = ("asha", "none")
METRICS = ("reward", "top1")
OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(ModelOptions)
                      if f.name not in ("causal", "num_classes"))


class SpaceError(SpecError):
    """A search space file that cannot be searched; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class LayerChoices:
    """Choices of one layer: expansion widths (absolute, or ratios of the block width) and kernels."""

    expand: tuple[int, ...] = ()
    expand_ratio: tuple[float, ...] = ()
    kernel: tuple[Triple, ...] = ()

    @property
    def expand_choices(self) -> tuple[int | float, ...]:
        return self.expand or self.expand_ratio

    def width(self, choice: int | float, filters: int) -> int:
        """The expansion width a choice stands for in a block of ``filters`` channels."""
        return choice if self.expand else make_divisible(choice * filters, 8)


@dataclasses.dataclass(frozen=True)
class BlockChoices:
    filters: tuple[int, ...]
    depth: tuple[int, ...]                     # every allowed depth, ascending
    stride: tuple[int, ...]
    layers: tuple[LayerChoices, ...]           # one per layer up to max(depth)


@dataclasses.dataclass(frozen=True)
class Objective:
    metric: str
    target_macs: float
    window: float
    beta: float

    @property
    def bounds(self) -> tuple[float, float]:
        return self.target_macs * (1 - self.window), self.target_macs * (1 + self.window)

    def accepts(self, macs: int) -> bool:
        low, high = self.bounds
        return low <= macs <= high

    def reward(self, top1: float, macs: int) -> float:
        """TuNAS absolute reward (Bender et al. 2020): quality + beta * |cost / target - 1|."""
        return top1 + self.beta * abs(macs / self.target_macs - 1)


@dataclasses.dataclass(frozen=True)
class Settings:
    algorithm: str
    scheduler: str
    num_trials: int
    seed: int
    cpus: float
    gpus: float
    max_concurrent: int | None
    workers: int = 1


@dataclasses.dataclass(frozen=True)
class Param:
    """One categorical dimension of a space; a layer's params are active only below its block's depth."""

    name: str
    choices: tuple
    depth_param: str | None = None
    layer: int = 0

    def active(self, values: Mapping[str, Any]) -> bool:
        return self.depth_param is None or values[self.depth_param] > self.layer


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    name: str
    resolution: tuple[int, ...]
    frames: tuple[int, ...]
    frame_stride: tuple[int, ...]
    stem_filters: tuple[int, ...]
    stem_kernel: Triple
    stem_stride: Triple
    blocks: tuple[BlockChoices, ...]
    project_filters: tuple[int, ...]
    head_filters: tuple[int, ...]
    options: Mapping[str, tuple]
    objective: Objective
    data: Mapping[str, Any]
    budget: Mapping[str, Any]
    settings: Settings
    source: str = "<space>"
    oneshot: Mapping[str, Any] = dataclasses.field(default_factory=dict)   # the raw ``oneshot:`` section

    @property
    def num_classes(self) -> int | None:
        """Classes of the configured data set when the file names them (the classifier's width)."""
        return self.data.get("num_classes")

    def params(self) -> tuple[Param, ...]:
        """The space as ordered categorical parameters; values are YAML scalars (kernels as 'TxHxW')."""
        out = [Param("input.resolution", self.resolution), Param("input.frames", self.frames),
               Param("input.frame_stride", self.frame_stride), Param("stem.filters", self.stem_filters)]
        for b, block in enumerate(self.blocks):
            depth = f"b{b}.depth"
            out += [Param(f"b{b}.filters", block.filters), Param(depth, block.depth),
                    Param(f"b{b}.stride", block.stride)]
            for l, layer in enumerate(block.layers):
                guard = depth if l >= block.depth[0] else None
                out += [Param(f"b{b}.l{l}.expand", layer.expand_choices, guard, l),
                        Param(f"b{b}.l{l}.kernel", tuple(kernel_name(k) for k in layer.kernel), guard, l)]
        out += [Param("head.project_filters", self.project_filters),
                Param("head.head_filters", self.head_filters)]
        out += [Param(f"options.{key}", choices) for key, choices in self.options.items()]
        return tuple(out)

    def sample(self, choose: Callable[[Param], Any]) -> dict[str, Any]:
        """A point chosen parameter by parameter (define-by-run), skipping inactive layers."""
        values: dict[str, Any] = {}
        for param in self.params():
            if param.active(values):
                values[param.name] = choose(param)
        return values

    def size(self) -> int:
        """The number of distinct points (a grid search visits each)."""
        total = 1
        for param in self.params():
            if not re.match(r"b\d+\.", param.name):        # block parameters are counted below
                total *= len(param.choices)
        for block in self.blocks:
            layer_counts = [len(layer.expand_choices) * len(layer.kernel) for layer in block.layers]
            total *= len(block.filters) * len(block.stride) * sum(
                math.prod(layer_counts[:depth]) for depth in block.depth)
        return total

    def points(self) -> Iterator[dict[str, Any]]:
        """Every point once, in a fixed order (the grid)."""
        params = self.params()

        def walk(i: int, values: dict) -> Iterator[dict]:
            if i == len(params):
                yield dict(values)
                return
            param = params[i]
            if not param.active(values):
                yield from walk(i + 1, values)
                return
            for choice in param.choices:
                values[param.name] = choice
                yield from walk(i + 1, values)
            del values[param.name]

        return walk(0, {})

    def extreme_points(self) -> list[dict[str, Any]]:
        """The all-smallest and all-largest points: for the widths, depths and sizes, which most
        multiply-adds grow with, these bound the space's cost."""
        def pick(largest: bool):
            def choose(param: Param):
                if all(isinstance(c, (int, float)) for c in param.choices):
                    return (max if largest else min)(param.choices)
                if param.name.endswith(".kernel"):
                    return (max if largest else min)(param.choices, key=lambda k: _volume(parse_kernel(k)))
                return param.choices[0]
            return self.sample(choose)
        return [pick(False), pick(True)]


def kernel_name(kernel: Sequence[int]) -> str:
    return "x".join(str(k) for k in kernel)


def parse_kernel(name: str) -> Triple:
    return tuple(int(k) for k in name.split("x"))


def _volume(kernel: Triple) -> int:
    return kernel[0] * kernel[1] * kernel[2]


class _SpaceReader(SpecReader):
    def fail(self, path: str, message: str):
        raise SpaceError(f"{self.source}: {path}: {message}")

    def choices(self, value, path: str, check: Callable[[Any, str], Any]) -> tuple:
        """A scalar (one fixed choice) or a non-empty list of distinct choices, each checked."""
        values = value if isinstance(value, list) else [value]
        if not values:
            self.fail(path, "expected a non-empty list of choices")
        out = tuple(check(v, f"{path}[{i}]" if isinstance(value, list) else path)
                    for i, v in enumerate(values))
        if len(set(out)) != len(out):
            self.fail(path, f"expected distinct choices, got {value!r}")
        return out

    def int_choices(self, value, path: str) -> tuple[int, ...]:
        return self.choices(value, path, self.positive_int)

    def ratio(self, value, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self.fail(path, f"expected a positive ratio of the block width, got {value!r}")
        return float(value)

    def number(self, value, path: str, low: float | None = None, high: float | None = None) -> float:
        if isinstance(value, str):                 # YAML 1.1 reads 6.0e6 (no sign) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(path, f"expected a number, got {value!r}")
        if (low is not None and value <= low) or (high is not None and value >= high):
            bounds = f"({'-inf' if low is None else low}, {'inf' if high is None else high})"
            self.fail(path, f"expected a number in {bounds}, got {value!r}")
        return float(value)

    def one_of(self, value, path: str, allowed: Sequence[str]) -> str:
        if value not in allowed:
            self.fail(path, f"expected one of {list(allowed)}, got {value!r}")
        return value

    def depth(self, value, path: str) -> tuple[int, ...]:
        if isinstance(value, list):
            if len(value) != 2:
                self.fail(path, f"expected an integer or an inclusive range [min, max], got {value!r}")
            low, high = (self.positive_int(v, f"{path}[{i}]") for i, v in enumerate(value))
            if low > high:
                self.fail(path, f"expected min <= max, got {value!r}")
            return tuple(range(low, high + 1))
        return (self.positive_int(value, path),)

    def kernels(self, value, path: str) -> tuple[Triple, ...]:
        if not isinstance(value, list) or not value:
            self.fail(path, f"expected a list of [t, h, w] kernels, got {value!r}")
        if all(isinstance(v, int) for v in value):
            value = [value]
        return self.choices(value, path, self.triple)


def _layer_choices(r: _SpaceReader, data: Mapping, path: str, required: bool) -> LayerChoices:
    if "expand" in data and "expand_ratio" in data:
        r.fail(path, "give either expand (absolute widths) or expand_ratio (ratios of filters), not both")
    if required and "expand" not in data and "expand_ratio" not in data:
        r.fail(f"{path}.expand", "missing (or expand_ratio): every layer needs expansion choices")
    if required and "kernel" not in data:
        r.fail(f"{path}.kernel", "missing: every layer needs kernel choices")
    return LayerChoices(
        expand=r.int_choices(data["expand"], f"{path}.expand") if "expand" in data else (),
        expand_ratio=(r.choices(data["expand_ratio"], f"{path}.expand_ratio", r.ratio)
                      if "expand_ratio" in data else ()),
        kernel=r.kernels(data["kernel"], f"{path}.kernel") if "kernel" in data else (),
    )


def _block_choices(r: _SpaceReader, data, path: str) -> BlockChoices:
    r.mapping(data, path, ("filters", "depth"), ("stride", "expand", "expand_ratio", "kernel", "layers"))
    depth = r.depth(data["depth"], f"{path}.depth")
    stride = r.choices(data.get("stride", 1), f"{path}.stride",
                       lambda v, p: r.one_of(v, p, (1, 2)))
    default = _layer_choices(r, data, path, required=False)
    overrides = data.get("layers") or []
    if not isinstance(overrides, list):
        r.fail(f"{path}.layers", "expected a list of per-layer choices")
    if len(overrides) > depth[-1]:
        r.fail(f"{path}.layers", f"{len(overrides)} layers given but depth is at most {depth[-1]}")
    layers = []
    for l in range(depth[-1]):
        lpath = f"{path}.layers[{l}]"
        if l < len(overrides):
            r.mapping(overrides[l], lpath, (), ("expand", "expand_ratio", "kernel"))
            own = _layer_choices(r, overrides[l], lpath, required=False)
        else:
            own = LayerChoices()
        expand, ratio = ((own.expand, own.expand_ratio) if own.expand or own.expand_ratio
                         else (default.expand, default.expand_ratio))
        if not expand and not ratio:
            r.fail(f"{lpath}.expand", "missing: give expand or expand_ratio for the block or this layer")
        kernel = own.kernel or default.kernel
        if not kernel:
            r.fail(f"{lpath}.kernel", "missing: give kernel choices for the block or this layer")
        layers.append(LayerChoices(expand=expand, expand_ratio=ratio, kernel=kernel))
    return BlockChoices(filters=r.int_choices(data["filters"], f"{path}.filters"), depth=depth,
                        stride=stride, layers=tuple(layers))


def _option_choices(r: _SpaceReader, data, path: str) -> dict[str, tuple]:
    r.mapping(data, path, (), OPTION_FIELDS)

    def check(name):
        def one(value, vpath):
            try:
                ModelOptions(causal=True, **{name: value})
            except (TypeError, ValueError) as err:
                r.fail(vpath, str(err))
            return value
        return one

    return {name: r.choices(value, f"{path}.{name}", check(name)) for name, value in data.items()}


def _objective(r: _SpaceReader, data) -> Objective:
    r.mapping(data, "objective", ("target_macs", "window"), ("metric", "beta"))
    return Objective(
        metric=r.one_of(data.get("metric", "reward"), "objective.metric", METRICS),
        target_macs=r.number(data["target_macs"], "objective.target_macs", low=0),
        window=r.number(data["window"], "objective.window", low=0, high=1),
        beta=r.number(data.get("beta", -0.5), "objective.beta", high=0),
    )


def _settings(r: _SpaceReader, data) -> Settings:
    r.mapping(data, "search", (), ("num_trials", "algorithm", "scheduler", "seed", "resources",
                                   "max_concurrent", "workers"))
    algorithm = r.one_of(data.get("algorithm", "random"), "search.algorithm", ALGORITHMS)
    if algorithm != "oneshot" and "num_trials" not in data:
        r.fail("search.num_trials", "missing")
    resources = r.mapping(data.get("resources") or {}, "search.resources", (), ("cpus", "gpus"))
    cpus = r.number(resources.get("cpus", 1), "search.resources.cpus", low=0)
    gpus = resources.get("gpus", 0)
    if gpus != 0:
        gpus = r.number(gpus, "search.resources.gpus", low=0)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        r.fail("search.seed", f"expected an integer, got {seed!r}")
    max_concurrent = data.get("max_concurrent")
    return Settings(
        algorithm=algorithm,
        scheduler=r.one_of(data.get("scheduler", "none"), "search.scheduler", SCHEDULERS),
        num_trials=r.positive_int(data.get("num_trials", 1), "search.num_trials"),
        seed=seed, cpus=cpus, gpus=float(gpus),
        max_concurrent=(None if max_concurrent is None
                        else r.positive_int(max_concurrent, "search.max_concurrent")),
        workers=r.positive_int(data.get("workers", 1), "search.workers"),
    )


def space_from_dict(data: Mapping, source: str = "<space>") -> SearchSpace:
    """Builds a validated SearchSpace; raises SpaceError naming ``source`` and the field path."""
    r = _SpaceReader(source)
    r.mapping(data, "", ("name", "space", "objective", "budget", "search"), ("data", "oneshot"))
    name = data["name"]
    if not isinstance(name, str) or not name or "/" in name:
        r.fail("name", f"expected a non-empty string without '/', got {name!r}")
    space = r.mapping(data["space"], "space", ("input", "stem", "blocks", "head"), ("options",))
    inp = r.mapping(space["input"], "space.input", ("resolution", "frames"), ("frame_stride",))
    stem = r.mapping(space["stem"], "space.stem", ("filters",), ("kernel", "stride"))
    stem_kernel, stem_stride = r.stem_kernel_stride(stem, "space.stem")
    blocks = space["blocks"]
    if not isinstance(blocks, list) or not blocks:
        r.fail("space.blocks", "expected a non-empty list of blocks")
    head = r.mapping(space["head"], "space.head", ("project_filters", "head_filters"))
    budget = r.mapping(data["budget"], "budget", ("epochs",), _open_fields(data["budget"]))
    r.positive_int(budget["epochs"], "budget.epochs")
    dataset = r.mapping(data.get("data") or {}, "data", (), _open_fields(data.get("data") or {}))
    oneshot = data.get("oneshot") or {}   # its fields are checked by search.oneshot.settings
    return SearchSpace(
        name=name,
        resolution=r.int_choices(inp["resolution"], "space.input.resolution"),
        frames=r.int_choices(inp["frames"], "space.input.frames"),
        frame_stride=r.int_choices(inp.get("frame_stride", 1), "space.input.frame_stride"),
        stem_filters=r.int_choices(stem["filters"], "space.stem.filters"),
        stem_kernel=stem_kernel,
        stem_stride=stem_stride,
        blocks=tuple(_block_choices(r, block, f"space.blocks[{b}]") for b, block in enumerate(blocks)),
        project_filters=r.int_choices(head["project_filters"], "space.head.project_filters"),
        head_filters=r.int_choices(head["head_filters"], "space.head.head_filters"),
        options=_option_choices(r, space.get("options") or {}, "space.options"),
        objective=_objective(r, data["objective"]),
        data=dict(dataset),
        budget=dict(budget),
        settings=_settings(r, data["search"]),
        source=source,
        oneshot=dict(r.mapping(oneshot, "oneshot", (), _open_fields(oneshot))),
    )


def _open_fields(value) -> tuple:
    """Sections passed through to the trainer: any field names are accepted here."""
    return tuple(value) if isinstance(value, Mapping) else ()


def load_space(path: "str | Path | SearchSpace") -> SearchSpace:
    if isinstance(path, SearchSpace):
        return path
    return space_from_dict(read_yaml(path, "search space", SpaceError), source=str(path))


def space_to_dict(space: SearchSpace) -> dict:
    """The YAML form of a space (``space_from_dict`` of it gives the same space back)."""
    def listed(values):
        return [list(v) if isinstance(v, tuple) else v for v in values]

    blocks = []
    for block in space.blocks:
        depth = block.depth[0] if len(block.depth) == 1 else [block.depth[0], block.depth[-1]]
        layers = [{("expand" if layer.expand else "expand_ratio"): list(layer.expand_choices),
                   "kernel": listed(layer.kernel)} for layer in block.layers]
        blocks.append({"filters": list(block.filters), "depth": depth, "stride": list(block.stride),
                       "layers": layers})
    s = space.settings
    out = {
        "name": space.name,
        "space": {
            "input": {"resolution": list(space.resolution), "frames": list(space.frames),
                      "frame_stride": list(space.frame_stride)},
            "stem": {"filters": list(space.stem_filters), "kernel": list(space.stem_kernel),
                     "stride": list(space.stem_stride)},
            "blocks": blocks,
            "head": {"project_filters": list(space.project_filters),
                     "head_filters": list(space.head_filters)},
            "options": {key: list(values) for key, values in space.options.items()},
        },
        "objective": dataclasses.asdict(space.objective),
        "data": dict(space.data),
        "budget": dict(space.budget),
        "search": {"algorithm": s.algorithm, "scheduler": s.scheduler, "num_trials": s.num_trials,
                   "seed": s.seed, "resources": {"cpus": s.cpus, "gpus": s.gpus},
                   "max_concurrent": s.max_concurrent, "workers": s.workers},
    }
    if space.oneshot:
        out["oneshot"] = dict(space.oneshot)
    return out


def dump_space(space: SearchSpace) -> str:
    return yaml.safe_dump(space_to_dict(space), sort_keys=False, width=120)


def space_from_spec(spec: ModelSpec, *, target_macs: float, frames: int | None = None,
                    resolution: int | None = None, window: float = 0.01,
                    data: Mapping | None = None, budget: Mapping | None = None,
                    search: Mapping | None = None) -> SearchSpace:
    """The one-point space holding exactly ``spec`` on one clip (e.g. a published model)."""
    blocks = []
    for b, block in enumerate(spec.blocks):
        if any(layer.stride != (1, 1, 1) for layer in block.layers[1:]):
            raise SpaceError(f"{spec.name}: blocks[{b}]: a space strides only in a block's first layer")
        blocks.append({"filters": block.filters, "depth": len(block.layers),
                       "stride": block.layers[0].stride[1],
                       "layers": [{"expand": layer.expand, "kernel": list(layer.kernel)}
                                  for layer in block.layers]})
    frames = frames or (spec.input.frames if spec.input else None)
    resolution = resolution or (spec.input.resolution if spec.input else None)
    if frames is None or resolution is None:
        raise SpaceError(f"{spec.name}: the spec has no published input: give frames and resolution")
    data = {
        "name": spec.name,
        "space": {
            "input": {"resolution": resolution, "frames": frames},
            "stem": {"filters": spec.stem.filters, "kernel": list(spec.stem.kernel),
                     "stride": list(spec.stem.stride)},
            "blocks": blocks,
            "head": {"project_filters": spec.head.project_filters, "head_filters": spec.head.head_filters},
            "options": {key: value for key, value in spec.stream.items()},
        },
        "objective": {"target_macs": target_macs, "window": window},
        "data": dict(data or {}),
        "budget": dict(budget or {"epochs": 1}),
        "search": dict(search or {"num_trials": 1}),
    }
    return space_from_dict(data, source=f"<one-point space of {spec.name}>")

