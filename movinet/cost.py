"""Cost model: parameters, multiply-adds and stream-state size from a spec alone.

No TensorFlow graph is built, so thousands of candidate specs can be scored per second.
Parameter counts equal Keras ``count_params()`` of the built model (BN statistics included).
Multiply-adds count convolutions, SE and the classifier (MobileNet convention, the one the
MoViNet paper's "GFLOPs" use); batch norm, activations, pooling and element-wise products
are left out.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Any, Mapping, NamedTuple

from movinet.options import ModelOptions, resolve_options
from movinet.spec import ModelSpec, load_spec


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds to a multiple of ``divisor``, never more than 10% down (as the official nn_layers)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


def se_hidden(expand: int, options: ModelOptions) -> int:
    return _se_hidden(expand, options.se_ratio, options.se_type == "2plus3d")


@lru_cache(maxsize=4096)
def _se_hidden(expand: int, se_ratio: float, doubled: bool) -> int:
    return make_divisible(se_ratio * expand * (2 if doubled else 1), 8)


def downsampled(size: int, stride: int) -> int:
    """Output size of a TF 'SAME' convolution or pooling."""
    return -(-size // stride)


def stream_buffer(kt: int, expand: int, h: int, w: int, ho: int, wo: int,
                   separable: bool) -> tuple[int, int, int, int]:
    """Frames, height, width and channels of the input a causal depthwise conv keeps between calls.

    The last kt - 1 frames: in (2+1)D the temporal conv follows the strided spatial one, so they are
    ``ho`` x ``wo``; a 3D conv keeps its ``h`` x ``w`` input.
    """
    return (kt - 1, ho, wo, expand) if separable else (kt - 1, h, w, expand)


@lru_cache(maxsize=1024)
def _layer_names(block: int, depth: int) -> tuple[str, ...]:
    return tuple(f"block{block}_layer{layer}" for layer in range(depth))


_resolved: dict[tuple, ModelOptions] = {}


def _resolve_options(spec: ModelSpec, mode: str, overrides: Mapping[str, Any]) -> ModelOptions:
    """``resolve_options``, remembered: a search scores thousands of specs under the same few settings.

    The key is everything ``resolve_options`` reads: the mode, the spec's ``stream`` and ``options``
    and the overrides, each value with its type, so that ``1``, ``1.0`` and ``True`` resolve (and
    fail) on their own.
    """
    key = (mode, *(tuple((name, type(value), value) for name, value in settings.items())
                   for settings in (spec.stream, spec.options, overrides)))
    try:
        return _resolved[key]
    except KeyError:
        if len(_resolved) >= 1024:
            _resolved.clear()
        options = _resolved[key] = resolve_options(spec, mode, **overrides)
        return options
    except TypeError:                                  # an unhashable value: resolve it every time
        return resolve_options(spec, mode, **overrides)


class LayerCost(NamedTuple):
    name: str
    out_shape: tuple[int, int, int, int]   # frames, height, width, channels
    params: int
    bn_statistics: int                     # BN moving mean and variance (non-trainable)
    macs: int
    state_elements: int                    # float elements of this layer's stream states
    state_counters: int = 0                # int32 frame counters of this layer's stream states


@dataclasses.dataclass(frozen=True)
class Cost:
    spec_name: str
    input_shape: tuple[int, int, int, int]   # frames, height, width, 3
    layers: tuple[LayerCost, ...]
    options: ModelOptions

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def trainable_params(self) -> int:
        return self.params - sum(layer.bn_statistics for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def state_elements(self) -> int:
        return sum(layer.state_elements for layer in self.layers)

    @property
    def state_bytes(self) -> int:
        """float32 state buffers plus the int32 frame counters."""
        return 4 * sum(layer.state_elements + layer.state_counters for layer in self.layers)

    def summary(self) -> dict:
        return {"name": self.spec_name, "input_shape": list(self.input_shape), "params": self.params,
                "trainable_params": self.trainable_params, "macs": self.macs, "gmacs": self.macs / 1e9,
                "state_elements": self.state_elements, "state_bytes": self.state_bytes}


def cost(spec: "ModelSpec | str", mode: str = "base", *, frames: int | None = None,
         resolution: int | tuple[int, int] | None = None, options: ModelOptions | None = None,
         **overrides) -> Cost:
    """Per-layer and total cost of ``spec`` built in ``mode`` on a frames x resolution clip.

    Args:
      spec: a ModelSpec, a published name or a spec file.
      mode: 'base' or 'stream' (ignored when ``options`` is given).
      frames, resolution: the clip (defaults: the spec's published input). ``resolution`` is
        an int (square) or (height, width).
      options: fully resolved build options; else ``overrides`` on top of ``mode``'s defaults.

    Raises:
      ValueError: a clip of no frames or no pixels (zero or negative ``frames`` or ``resolution``).
    """
    spec = load_spec(spec)
    options = options or _resolve_options(spec, mode, overrides)
    if frames is None or resolution is None:
        if spec.input is None:
            raise ValueError(f"spec {spec.name!r} has no published input: give frames and resolution")
        frames = spec.input.frames if frames is None else frames
        resolution = spec.input.resolution if resolution is None else resolution
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    if frames < 1 or min(height, width) < 1:   # such a clip would cost zero or less
        bad = f"frames={frames}" if frames < 1 else f"resolution={resolution}"
        raise ValueError(f"{bad}: expected a positive number")
    causal = options.causal
    t = frames
    layers = []
    new_layer = tuple.__new__        # skips LayerCost's generated __new__, halving the time to build one
    append = layers.append

    stem = spec.stem
    h, w = downsampled(height, stem.stride[1]), downsampled(width, stem.stride[2])
    kernel = stem.kernel[1] * stem.kernel[2] * 3 * stem.filters
    params, stats = 4 * stem.filters, 2 * stem.filters
    append(new_layer(LayerCost, ("stem", (t, h, w, stem.filters), kernel + params, stats, t * h * w * kernel,
                                 0, 0)))

    se_type = options.se_type
    separable = options.separable
    has_se = se_type != "none"
    se_doubled = se_type == "2plus3d"
    se_fan = 3 if se_doubled else 2        # weights per (e, hidden): squeeze e (2plus3d: 2e), excite e
    se_positions = 1 if (se_type == "3d" and not causal) else t
    pe_params = int(options.positional_encoding and has_se)
    pool_state = causal and "3d" in se_type
    se_ratio = options.se_ratio
    pool_counters = int(pool_state) + pe_params
    cin = stem.filters
    pixels_in = t * h * w
    for b, block in enumerate(spec.blocks):
        cout = block.filters
        for name, layer in zip(_layer_names(b, len(block.layers)), block.layers):
            e = layer.expand
            kt, kh, kw = layer.kernel
            stride = layer.stride[1]
            if stride > 1:
                ho, wo = -(-h // stride), -(-w // stride)   # downsampled(), inlined
            else:
                ho, wo = h, w
            pixels = t * ho * wo
            if separable and kt > 1:                   # (2+1)D: spatial then temporal depthwise
                taps, norms = kh * kw + kt, 3          # BNs after expansion, spatial and temporal
            else:
                taps, norms = kt * kh * kw, 2          # BNs after expansion and depthwise
            # expansion, depthwise and projection convs, their BNs (4 weights per channel, 2 of them
            # moving statistics) and the ReZero scale
            params = (cin + taps + cout + 4 * norms) * e + 4 * cout + 1
            stats = 2 * norms * e + 2 * cout
            macs = (pixels_in * cin + pixels * (taps + cout)) * e
            if has_se:
                hidden = _se_hidden(e, se_ratio, se_doubled)
                se_weights = se_fan * e * hidden
                params += se_weights + hidden + e + pe_params
                macs += se_positions * se_weights
            if cin != cout or stride > 1:              # skip projection
                params += cin * cout + 4 * cout
                stats += 2 * cout
                macs += pixels * cin * cout
            if causal:
                state = math.prod(stream_buffer(kt, e, h, w, ho, wo, separable)) if kt > 1 else 0
                if pool_state:
                    state += e
                counters = pool_counters
            else:
                state = counters = 0
            append(new_layer(LayerCost, (name, (t, ho, wo, cout), params, stats, macs, state, counters)))
            h, w, cin, pixels_in = ho, wo, cout, pixels

    project = spec.head.project_filters
    params, stats = 4 * project, 2 * project
    head_pool = causal and options.average_pooling_type == "3d"   # only the 3D mean runs over frames
    append(new_layer(LayerCost, ("head", (1, 1, 1, project), cin * project + params, stats,
                                 t * h * w * cin * project, project if head_pool else 0, int(head_pool))))
    hidden, classes = spec.head.head_filters, options.num_classes
    # The classifier runs on each pooled vector: one per clip ('3d'), frame ('2d') or position ('none').
    pooled = {"3d": (1, 1, 1), "2d": (t, 1, 1), "none": (t, h, w)}[options.average_pooling_type]
    vectors = math.prod(pooled)
    append(new_layer(LayerCost, ("classifier_head", (*pooled, hidden), project * hidden + hidden, 0,
                                 vectors * project * hidden, 0, 0)))
    append(new_layer(LayerCost, ("classifier", (*pooled, classes), hidden * classes + classes, 0,
                                 vectors * hidden * classes, 0, 0)))
    return Cost(spec.name, (frames, height, width, 3), tuple(layers), options)


def state_shapes(spec: "ModelSpec | str", options: ModelOptions, batch: int, height: int,
                 width: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names, shapes and dtypes of the stream states, in the official order and naming."""
    spec = load_spec(spec)
    if not options.causal:
        return {}
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    h, w = downsampled(height, spec.stem.stride[1]), downsampled(width, spec.stem.stride[2])
    for b, l, _, _, layer in spec.iter_layers():
        prefix = f"state_block{b}_layer{l}"
        stride = layer.stride[1]
        ho, wo = downsampled(h, stride), downsampled(w, stride)
        e, kt = layer.expand, layer.kernel[0]
        if kt > 1:
            buffer = stream_buffer(kt, e, h, w, ho, wo, options.separable)
            shapes[f"{prefix}_stream_buffer"] = ((batch, *buffer), "float32")
        if "3d" in options.se_type:
            shapes[f"{prefix}_pool_buffer"] = ((batch, 1, 1, 1, e), "float32")
            shapes[f"{prefix}_pool_frame_count"] = ((1,), "int32")
        if options.positional_encoding and options.se_type != "none":
            shapes[f"{prefix}_pos_enc_frame_count"] = ((1,), "int32")
        h, w = ho, wo
    if options.average_pooling_type == "3d":       # '2d' and 'none' pool each frame on its own
        shapes["state_head_pool_buffer"] = ((batch, 1, 1, 1, spec.head.project_filters), "float32")
        shapes["state_head_pool_frame_count"] = ((1,), "int32")
    return shapes


def format_table(result: Cost) -> str:
    """A per-layer text table with totals, for ``movinet info``."""
    rows = [("layer", "output (t,h,w,c)", "params", "MACs", "state floats")]
    for layer in result.layers:
        rows.append((layer.name, "x".join(map(str, layer.out_shape)), f"{layer.params:,}",
                     f"{layer.macs:,}", f"{layer.state_elements:,}"))
    rows.append(("total", "x".join(map(str, result.input_shape)), f"{result.params:,}",
                 f"{result.macs:,}", f"{result.state_elements:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(-1, "-" * len(lines[0]))
    footer = (f"{result.spec_name}: {result.params:,} parameters ({result.trainable_params:,} trainable), "
              f"{result.macs / 1e9:.3f} GMACs on {result.input_shape[0]}x{result.input_shape[1]}"
              f"x{result.input_shape[2]}")
    if result.options.causal:
        footer += f", stream state {result.state_bytes / 2**20:.2f} MiB per clip (batch 1)"
    return "\n".join(lines + [footer])

