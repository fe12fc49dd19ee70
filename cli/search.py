"""``movinet search``: an architecture search over a YAML search space."""

from __future__ import annotations


def register(subparsers) -> None:
    search = subparsers.add_parser("search", help="search a YAML space of MoViNets on Ray Tune or KerasTuner")
    search.add_argument("space", help="a search space file (see specs/spaces/demo.yaml)")
    search.add_argument("--backend", default="ray", help="ray (default) or kerastuner (one process, no Ray)")
    search.add_argument("--address", help="join the Ray cluster at host:port (default: start a local Ray)")
    search.add_argument("--resume", action="store_true",
                        help="continue the search in the output folder; finished trials are kept, not re-run")
    search.add_argument("--output-dir", default="results", help="results go to OUTPUT_DIR/<space name>/")
    search.add_argument("--num-trials", type=int, help="override search.num_trials")
    search.add_argument("--algorithm",
                        help="random, grid, tpe, multi_objective or oneshot (override search.algorithm)")
    search.add_argument("--scheduler", help="asha or none (override search.scheduler)")
    search.add_argument("--cpus", type=float,
                        help="CPUs per trial, or per worker of a one-shot search (override search.resources.cpus)")
    search.add_argument("--gpus", type=float,
                        help="GPUs per trial, or per worker of a one-shot search (override search.resources.gpus)")
    search.add_argument("--workers", type=int,
                        help="oneshot: data-parallel workers of each supernet (override search.workers)")
    search.add_argument("--retrain", action="store_true",
                        help="oneshot: train each found spec from scratch as an ordinary trial afterwards")
    search.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    search.set_defaults(run=run_search)


def run_search(args) -> int:
    from cli.main import CommandError
    from search import SearchError, run_search as search
    from search.cluster import ClusterError

    try:
        search(args.space, backend=args.backend, output_dir=args.output_dir, resume=args.resume,
               address=args.address, num_trials=args.num_trials, algorithm=args.algorithm,
               scheduler=args.scheduler, cpus=args.cpus, gpus=args.gpus, num_cpus=args.num_cpus,
               workers=args.workers, retrain=args.retrain)
    except (SearchError, ClusterError) as err:
        raise CommandError(str(err)) from None
    return 0
