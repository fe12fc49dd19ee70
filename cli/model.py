"""``movinet info``: the per-layer cost table of a named model or a spec file."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    info = subparsers.add_parser("info", help="per-layer parameters, multiply-adds and state size of a model")
    info.add_argument("model", help="a published name (a0..a5, t0) or a spec YAML file")
    info.add_argument("--mode", choices=("base", "stream"), default="base")
    info.add_argument("--frames", type=int, help="clip length (default: the published input)")
    info.add_argument("--resolution", type=int, help="square input size (default: the published input)")
    info.add_argument("--num-classes", type=int, default=600)
    info.add_argument("--conv-type", choices=("3d", "2plus1d", "3d_2plus1d"))
    info.add_argument("--se-type", choices=("3d", "2d", "2plus3d", "none"))
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(run=run_info)


def run_info(args) -> int:
    import movinet

    result = movinet.cost(args.model, args.mode, frames=args.frames, resolution=args.resolution,
                          num_classes=args.num_classes, conv_type=args.conv_type, se_type=args.se_type)
    if args.json:
        summary = result.summary()
        summary["mode"] = args.mode
        summary["layers"] = [{"name": layer.name, "out_shape": list(layer.out_shape), "params": layer.params,
                              "macs": layer.macs, "state_elements": layer.state_elements}
                             for layer in result.layers]
        print(json.dumps(summary, indent=1))
    else:
        print(movinet.format_table(result))
    return 0
