"""Architecture specs: the one data type behind A0-A5, T0 and every search candidate.

A spec is stem -> blocks of layers -> head, as in the official ``BLOCK_SPECS`` table
(MoViNets, arXiv 2103.11511, Table 8). Every published model is a YAML file under
``specs/``; this module reads, validates and writes those files, and nothing else in the
code base repeats their numbers.

YAML layout (see ``specs/a0.yaml``)::

    name: a0
    stem: {filters: 8, kernel: [1, 3, 3], stride: [1, 2, 2]}
    blocks:
    - filters: 8                        # output width of every layer in the block
      layers:
      - {expand: 24, kernel: [1, 5, 5], stride: [1, 2, 2]}
    head: {project_filters: 480, head_filters: 2048}
    input: {frames: 50, resolution: 172, fps: 5}        # optional, the published clip
    stream: {use_positional_encoding: false, classifier_activation: swish}   # optional
    options: {se_type: none}                            # optional build options, any mode
    published: {gmacs: 2.7, top1_base: 72.28}         # optional, free-form numbers

``stream`` holds defaults for stream mode only (the official per-model settings);
``options`` holds architecture choices that apply in every mode (a searched candidate's
SE type, say); keyword arguments of ``build_model`` override both.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from movinet.options import ModelOptions

Triple = tuple[int, int, int]


class SpecError(ValueError):
    """A spec that cannot describe a MoViNet; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class StemSpec:
    filters: int
    kernel: Triple = (1, 3, 3)
    stride: Triple = (1, 2, 2)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One bottleneck layer: 1x1x1 expand -> depthwise (t,h,w) -> SE -> 1x1x1 project."""

    expand: int
    kernel: Triple
    stride: Triple = (1, 1, 1)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    filters: int
    layers: tuple[LayerSpec, ...]


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    project_filters: int
    head_filters: int


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The clip a model was published for: frames x resolution^2 at fps."""

    frames: int
    resolution: int
    fps: float


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    stem: StemSpec
    blocks: tuple[BlockSpec, ...]
    head: HeadSpec
    input: InputSpec | None = None
    stream: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    published: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return sum(len(block.layers) for block in self.blocks)

    def iter_layers(self):
        """Yields (block_index, layer_index, in_filters, out_filters, LayerSpec) in order."""
        in_filters = self.stem.filters
        for b, block in enumerate(self.blocks):
            for l, layer in enumerate(block.layers):
                yield b, l, in_filters, block.filters, layer
                in_filters = block.filters

    def to_dict(self) -> dict:
        out: dict[str, Any] = {
            "name": self.name,
            "stem": {"filters": self.stem.filters, "kernel": list(self.stem.kernel),
                     "stride": list(self.stem.stride)},
            "blocks": [
                {"filters": block.filters,
                 "layers": [{"expand": layer.expand, "kernel": list(layer.kernel),
                             "stride": list(layer.stride)} for layer in block.layers]}
                for block in self.blocks
            ],
            "head": {"project_filters": self.head.project_filters,
                     "head_filters": self.head.head_filters},
        }
        if self.input is not None:
            out["input"] = {"frames": self.input.frames, "resolution": self.input.resolution,
                            "fps": self.input.fps}
        if self.stream:
            out["stream"] = dict(self.stream)
        if self.options:
            out["options"] = dict(self.options)
        if self.published:
            out["published"] = dict(self.published)
        return out

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)


STREAM_KEYS = ("use_positional_encoding", "classifier_activation")


class SpecReader:
    """Validates a nested mapping, naming the source and the field path in every error."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, message: str):
        raise SpecError(f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}")

    def mapping(self, value, path: str, required: Sequence[str], optional: Sequence[str] = ()):
        if not isinstance(value, Mapping):
            self.fail(path, f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - set(required) - set(optional))
        if unknown:
            self.fail(path, f"unknown field(s) {unknown}; expected {list(required) + list(optional)}")
        for key in required:
            if key not in value:
                self.fail(f"{path}.{key}" if path else key, "missing")
        return value

    def positive_int(self, value, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(path, f"expected a positive integer, got {value!r}")
        return value

    def stem_kernel_stride(self, stem: Mapping, path: str) -> tuple[Triple, Triple]:
        """The stem's kernel and stride (default [1, 3, 3] and [1, 2, 2]); the stem convolves each
        frame on its own, so its temporal kernel is 1."""
        kernel = self.triple(stem.get("kernel", [1, 3, 3]), f"{path}.kernel")
        if kernel[0] != 1:
            self.fail(f"{path}.kernel", "the stem is a per-frame convolution: its temporal kernel must be 1")
        return kernel, self.triple(stem.get("stride", [1, 2, 2]), f"{path}.stride", allowed=(1, 2))

    def triple(self, value, path: str, allowed: Sequence[int] | None = None) -> Triple:
        if (not isinstance(value, (list, tuple)) or len(value) != 3
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
            self.fail(path, f"expected [t, h, w] of three positive integers, got {value!r}")
        if allowed is not None and any(v not in allowed for v in value):
            self.fail(path, f"expected values in {list(allowed)}, got {value!r}")
        return tuple(value)


def spec_from_dict(data: Mapping, source: str = "<spec>") -> ModelSpec:
    """Builds a validated ModelSpec; raises SpecError naming ``source`` and the field path."""
    r = SpecReader(source)
    r.mapping(data, "", ("name", "stem", "blocks", "head"), ("input", "stream", "options", "published"))
    name = data["name"]
    if not isinstance(name, str) or not name:
        r.fail("name", f"expected a non-empty string, got {name!r}")

    stem = r.mapping(data["stem"], "stem", ("filters",), ("kernel", "stride"))
    filters = r.positive_int(stem["filters"], "stem.filters")
    stem_spec = StemSpec(filters, *r.stem_kernel_stride(stem, "stem"))

    blocks = data["blocks"]
    if not isinstance(blocks, list) or not blocks:
        r.fail("blocks", "expected a non-empty list of blocks")
    block_specs = []
    for b, block in enumerate(blocks):
        path = f"blocks[{b}]"
        r.mapping(block, path, ("filters", "layers"))
        layers = block["layers"]
        if not isinstance(layers, list) or not layers:
            r.fail(f"{path}.layers", "expected a non-empty list of layers")
        layer_specs = []
        for l, layer in enumerate(layers):
            lpath = f"{path}.layers[{l}]"
            r.mapping(layer, lpath, ("expand", "kernel"), ("stride",))
            stride = r.triple(layer.get("stride", [1, 1, 1]), f"{lpath}.stride", allowed=(1, 2))
            if stride[0] != 1:
                r.fail(f"{lpath}.stride", "MoViNets never stride in time; the temporal stride must be 1")
            if stride[1] != stride[2]:
                r.fail(f"{lpath}.stride", "the spatial strides must be equal")
            layer_specs.append(LayerSpec(
                expand=r.positive_int(layer["expand"], f"{lpath}.expand"),
                kernel=r.triple(layer["kernel"], f"{lpath}.kernel"),
                stride=stride,
            ))
        block_specs.append(BlockSpec(filters=r.positive_int(block["filters"], f"{path}.filters"),
                                     layers=tuple(layer_specs)))

    head = r.mapping(data["head"], "head", ("project_filters", "head_filters"))
    head_spec = HeadSpec(project_filters=r.positive_int(head["project_filters"], "head.project_filters"),
                         head_filters=r.positive_int(head["head_filters"], "head.head_filters"))

    input_spec = None
    if data.get("input") is not None:
        inp = r.mapping(data["input"], "input", ("frames", "resolution", "fps"))
        fps = inp["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0:
            r.fail("input.fps", f"expected a positive number, got {fps!r}")
        input_spec = InputSpec(frames=r.positive_int(inp["frames"], "input.frames"),
                               resolution=r.positive_int(inp["resolution"], "input.resolution"),
                               fps=fps)
    stream = dict(r.mapping(data.get("stream") or {}, "stream", (), STREAM_KEYS))
    options = dict(r.mapping(data.get("options") or {}, "options", (), _option_names()))
    published = data.get("published") or {}
    if not isinstance(published, Mapping):
        r.fail("published", "expected a mapping")
    return ModelSpec(name=name, stem=stem_spec, blocks=tuple(block_specs), head=head_spec,
                     input=input_spec, stream=stream, options=options, published=dict(published))


def _option_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(ModelOptions) if f.name != "num_classes")


class SpecDumper(yaml.SafeDumper):
    pass


def _represent_list(dumper, value):
    flow = all(isinstance(v, (int, float, str, bool)) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


def _represent_dict(dumper, value):
    flow = all(not isinstance(v, (dict, list)) or (isinstance(v, list) and all(
        isinstance(x, (int, float)) for x in v)) for v in value.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", value.items(), flow_style=flow)


SpecDumper.add_representer(list, _represent_list)
SpecDumper.add_representer(dict, _represent_dict)


def dump_spec(spec: ModelSpec) -> str:
    """The canonical YAML text of a spec (the form the files under specs/ are written in)."""
    return yaml.dump(spec.to_dict(), Dumper=SpecDumper, sort_keys=False, width=120)


def read_yaml(path: "str | os.PathLike", what: str, error: type[SpecError] = SpecError):
    """The data of the YAML file ``path``; ``error`` names the file when it is missing (a ``what``
    file), not text or not valid YAML."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such {what} file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:   # a video or an archive given for a YAML file
        raise error(f"{path}: not a text file, so not a {what} YAML file") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None


def spec_from_yaml(text: str, source: str = "<yaml>") -> ModelSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{source}: not valid YAML: {err}") from None
    return spec_from_dict(data, source)


def specs_dir() -> Path:
    """The folder of published specs: $MOVINET_SPECS, else ``specs/`` beside the package."""
    return Path(os.environ.get("MOVINET_SPECS", Path(__file__).resolve().parent.parent / "specs"))


def named_specs() -> list[str]:
    return sorted(p.stem for p in specs_dir().glob("*.yaml"))


def load_spec(name_or_path: "str | os.PathLike | ModelSpec") -> ModelSpec:
    """A spec from a published name (``a0``), a YAML file path, or a spec object."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not path.suffix and not path.exists():
        path = specs_dir() / f"{text.lower()}.yaml"
        if not path.exists():
            raise SpecError(f"unknown model {text!r}: known names are {named_specs()}, "
                            "or give the path of a spec YAML file")
    return spec_from_dict(read_yaml(path, "spec"), source=str(path))


def save_spec(spec: ModelSpec, path: "str | os.PathLike") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_spec(spec))
    return path
