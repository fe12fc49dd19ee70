"""Whether a spec is a point of a search space: the check that a family's spaces hold its models."""

from __future__ import annotations

from movinet.options import resolve_options
from movinet.spec import ModelSpec, load_spec
from search.candidate import MODE
from search.space import SearchSpace, kernel_name


def mismatches(space: SearchSpace, spec: "ModelSpec | str") -> list[str]:
    """Every field of ``spec`` (its architecture, published clip and searched stream settings)
    that no point of ``space`` can take; empty when the spec lies inside the space."""
    spec = load_spec(spec)
    out = []

    def check(field, value, choices):
        if value not in choices:
            out.append(f"{field} = {value!r} is not among {list(choices)}")

    check("stem.filters", spec.stem.filters, space.stem_filters)
    check("stem.kernel", spec.stem.kernel, (space.stem_kernel,))
    check("stem.stride", spec.stem.stride, (space.stem_stride,))
    if len(spec.blocks) != len(space.blocks):
        out.append(f"blocks: {len(spec.blocks)} blocks, the space has {len(space.blocks)}")
    for b, (block, choices) in enumerate(zip(spec.blocks, space.blocks)):
        check(f"blocks[{b}].filters", block.filters, choices.filters)
        check(f"blocks[{b}].depth", len(block.layers), choices.depth)
        for l, (layer, allowed) in enumerate(zip(block.layers, choices.layers)):
            where = f"blocks[{b}].layers[{l}]"
            widths = sorted({allowed.width(c, block.filters) for c in allowed.expand_choices})
            check(f"{where}.expand", layer.expand, widths)
            check(f"{where}.kernel", kernel_name(layer.kernel), [kernel_name(k) for k in allowed.kernel])
            strides = [(1, s, s) for s in choices.stride] if l == 0 else [(1, 1, 1)]
            check(f"{where}.stride", layer.stride, strides)
    check("head.project_filters", spec.head.project_filters, space.project_filters)
    check("head.head_filters", spec.head.head_filters, space.head_filters)
    if spec.input is not None:
        check("input.frames", spec.input.frames, space.frames)
        check("input.resolution", spec.input.resolution, space.resolution)
    built = resolve_options(spec, MODE)              # how the search builds its candidates
    for key, choices in space.options.items():
        check(f"options.{key} ({MODE} mode)", getattr(built, key), choices)
    return out


def contains(space: SearchSpace, spec: "ModelSpec | str") -> bool:
    """True when ``spec`` on its published clip is one of the candidates ``space`` can propose."""
    return not mismatches(space, spec)
