"""``movinet family``: scale the family's search spaces, search its members, list and materialize named models."""

from __future__ import annotations


def register(subparsers) -> None:
    family = subparsers.add_parser("family", help="the MoViNet family: scaled search spaces, A0-A6, ensembles")
    commands = family.add_subparsers(dest="family_command", metavar="SUBCOMMAND")
    commands.required = True

    scale = commands.add_parser("scale", help="write each member's search space, scaled from the base space")
    scale.add_argument("--family", help="a family file (default: specs/family/coefficients.yaml)")
    scale.add_argument("--out", default="results/family_spaces", help="folder for <member>.yaml (search space files)")
    scale.add_argument("--member", action="append", help="only this member (repeatable)")
    scale.set_defaults(run=run_scale)

    search = commands.add_parser("search", help="search one member's scaled space, or all members")
    search.add_argument("member", help="a member name, or 'all'")
    search.add_argument("--family", help="a family file (default: specs/family/coefficients.yaml)")
    search.add_argument("--parallel", action="store_true",
                        help="with 'all': search every member at once on Ray (default: one after another)")
    search.add_argument("--backend", default="ray", help="ray (default) or kerastuner")
    search.add_argument("--address", help="join the Ray cluster at host:port (default: start a local Ray)")
    search.add_argument("--output-dir", default="results", help="results go to OUTPUT_DIR/<family>_<member>/")
    search.add_argument("--resume", action="store_true", help="continue the searches in the output folders")
    search.add_argument("--num-trials", type=int, help="override search.num_trials of every member")
    search.add_argument("--algorithm", help="random, grid, tpe, multi_objective or oneshot")
    search.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    search.add_argument("--workers", type=int, help="oneshot: data-parallel workers of each member's supernet")
    search.add_argument("--retrain", action="store_true",
                        help="oneshot: train each found spec from scratch as an ordinary trial afterwards")
    search.add_argument("--proxy-frames", type=int,
                        help="oneshot: search on clips of this many frames (with --proxy-resolution), the "
                             "target scaled alike; the found spec is reported at the member's clip")
    search.add_argument("--proxy-resolution", type=int, help="oneshot: the proxy clip's resolution")
    search.set_defaults(run=run_search)

    listing = commands.add_parser("list", help="the named models: members, input, parameters, multiply-adds, top-1")
    listing.add_argument("--mode", choices=("base", "stream"), default="base")
    listing.set_defaults(run=run_list)

    materialize = commands.add_parser("materialize", help="build a named model (a0..a5, t0, a6) and save it")
    materialize.add_argument("name")
    materialize.add_argument("--mode", choices=("base", "stream"), default="base")
    materialize.add_argument("--checkpoint", action="append", default=[],
                             help="weights: PATH for a single model, MEMBER=PATH per member of an ensemble")
    materialize.add_argument("--num-classes", type=int, default=600)
    materialize.add_argument("--out", help="output folder (default: results/models/<name>_<mode>)")
    materialize.set_defaults(run=run_materialize)


def run_scale(args) -> int:
    from family.scaling import load_family, write_spaces

    family = load_family(args.family)
    for name, path in write_spaces(family, args.out, args.member).items():
        print(f"{name}: {path}")
    return 0


def run_search(args) -> int:
    from cli.main import CommandError
    from family.proxy import Proxy
    from family.run import search_members
    from search import SearchError
    from search.cluster import ClusterError

    if (args.proxy_frames is None) != (args.proxy_resolution is None):
        raise CommandError("--proxy-frames and --proxy-resolution go together: give both, or neither")
    proxy = Proxy(args.proxy_frames, args.proxy_resolution) if args.proxy_frames is not None else None
    try:
        search_members(args.member, family=args.family, parallel=args.parallel, output_dir=args.output_dir,
                       backend=args.backend, address=args.address, num_cpus=args.num_cpus, resume=args.resume,
                       num_trials=args.num_trials, algorithm=args.algorithm, proxy=proxy,
                       workers=args.workers, retrain=args.retrain)
    except (SearchError, ClusterError) as err:
        raise CommandError(str(err)) from None
    return 0


def run_list(args) -> int:
    from family import registry

    print(registry.format_registry([registry.describe(name, args.mode) for name in registry.names()], args.mode))
    return 0


def run_materialize(args) -> int:
    from cli.main import CommandError
    from family import registry

    paths = [item.split("=", 1) for item in args.checkpoint]
    if any(len(pair) == 2 for pair in paths):
        if not all(len(pair) == 2 for pair in paths):
            raise CommandError("--checkpoint: give either one PATH or MEMBER=PATH for every member")
        checkpoints = dict(paths)
    elif len(paths) > 1:
        raise CommandError("--checkpoint: a single model takes one PATH; an ensemble takes MEMBER=PATH")
    else:
        checkpoints = paths[0][0] if paths else None
    out = args.out or f"results/models/{args.name}_{args.mode}"
    path = registry.materialize(args.name, out, args.mode, num_classes=args.num_classes,
                                checkpoints_by_member=checkpoints)
    print(f"{args.name} ({args.mode}): {path}")
    return 0
