"""Ray Tune backend: trials as Ray actors on a local Ray or an existing cluster.

The sampler (``search.samplers``) stays in the driver behind a Tune ``Searcher``; a Tune
``Callback`` appends each finished or failed trial to the ledger the moment Tune sees it end, so a
search killed midway resumes from the ledger without losing or re-running a finished trial.
The driver asks Ray for no CPU itself: on a 2-core machine both cores go to trials.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

import ray
from ray import cloudpickle, tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher

from search.candidate import Candidate
from search.cluster import ClusterError, authenticate, check_reachable
from search.results import FAILED, OK, STOPPED, Ledger, format_row, trial_row
from search.samplers import Sampler
from search.space import SearchSpace
from search.trial import TRIAL_PROCESS, TrialFn, keep_off_gpus, run_trial, trial_location

BACKEND = "ray"


# Settings of the driver's environment that trials need too, with their value for trials where the
# driver sets none: TensorFlow reads them when it starts, and workers on other machines do not
# inherit them. Trials run oneDNN's kernels as `movinet search` does (the small candidates of the
# demo space train ~1.5x faster with them on 2 cores: 121 -> 81 ms a step), whether the search was
# started from the command line or from Python; TF_ENABLE_ONEDNN_OPTS=0 in the driver opts out.
# A trial on a GPU takes the GPU memory it needs as it goes rather than all of it at once, so
# trials that share a card (``resources: {gpus: 0.5}``) both fit; TF_FORCE_GPU_ALLOW_GROWTH=false
# in the driver opts out.
PASSED_ON = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


# The packages trials and member searches run, shipped to the nodes of a cluster joined by address.
SHIPPED = ("movinet", "search", "family")


def runtime_env(shipped: bool = False) -> dict:
    """What Ray workers need: this checkout of the code, a quiet TensorFlow, the driver's
    TensorFlow switches (``PASSED_ON``), and ``TRIAL_PROCESS`` (they only run trials).

    On this machine the code is the checkout on the workers' path; ``shipped``: Ray copies
    ``SHIPPED`` to every node (``py_modules``), for the nodes of a cluster need not have this
    checkout, nor the same version of it, at this path.
    """
    package_root = Path(__file__).resolve().parent.parent   # the folder holding search/
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", TRIAL_PROCESS: "1"}
    env.update({name: os.environ.get(name, default) for name, default in PASSED_ON.items()})
    path = [p for p in (None if shipped else str(package_root), os.environ.get("PYTHONPATH")) if p]
    if path:   # shipped modules come first on the workers' path (Ray puts py_modules before PYTHONPATH)
        env["PYTHONPATH"] = os.pathsep.join(path)
    if not shipped:
        return {"env_vars": env}
    return {"env_vars": env, "py_modules": [str(package_root / name) for name in SHIPPED],
            "excludes": ["__pycache__"]}


# The shutdown of the Ray that ``run`` started: most of it is waiting for Ray's processes to exit,
# so it goes on in this thread while the driver writes the results (``wait_stopped`` joins it).
_stopping: threading.Thread | None = None


def shutdown() -> None:
    """``ray.shutdown()``, the autoscaler's monitor of a local Ray stopped first.

    ``ray.shutdown`` stops the GCS before the monitor (Ray 2.60), and the monitor's SIGTERM handler
    then reports its own end to the GCS that is gone, until Ray kills it a second later: a fixed
    second of every local search. A search's local Ray has nothing to scale, so the monitor is
    killed first. A driver joined to a cluster started none of its processes: there this does
    nothing more than ``ray.shutdown()``.
    """
    node = getattr(ray._private.worker, "_global_node", None)   # absent in other Ray versions: plain shutdown
    kill_monitor = getattr(node, "kill_monitor", None)
    if kill_monitor is not None:
        kill_monitor(check_alive=False)
    ray.shutdown()


def wait_stopped() -> float:
    """Waits until the Ray that ``run`` started has shut down; returns the seconds waited here."""
    global _stopping
    began = time.monotonic()
    if _stopping is not None:
        _stopping.join()
        _stopping = None
    return time.monotonic() - began


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Starts a local Ray, or joins the cluster at ``address``; True if this call started Ray or
    joined a cluster (``shutdown`` then ends this driver's part in it).

    A cluster is joined with its token where it asks for one (``search.cluster.authenticate``),
    and with this checkout's code shipped to its nodes (``runtime_env(shipped=True)``).

    A local Ray starts no idle workers for the driver's job: Tune gives its trial actors a runtime
    environment of their own, so they never take such workers, which would only compete with the
    trials' own start for the CPUs. ``address="local"`` starts a new Ray even where a cluster
    started on this machine left its address behind (``ray.init()`` would join that one).
    """
    wait_stopped()
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, runtime_env=runtime_env(), logging_level="ERROR",
                 _system_config={"prestart_worker_first_driver": False})
        return True
    check_reachable(address)
    authenticate(address)
    try:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env(shipped=True),
                 logging_level="ERROR")
    except Exception as err:   # Ray raises ConnectionError, RuntimeError or its own types here
        raise ClusterError(f"cannot join the Ray cluster at {address}: {err}") from None
    return True


class CandidateSearcher(Searcher):
    """Hands Tune the sampler's candidates, at most ``limit`` of them, and feeds results back."""

    def __init__(self, sampler: Sampler, limit: int, metric: str):
        super().__init__(metric=metric, mode="max")
        self.sampler = sampler
        self.limit = limit
        self.suggested = 0
        self.exhausted = False
        self.candidates: dict[str, Candidate] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        if self.suggested >= self.limit:
            return Searcher.FINISHED
        candidate = self.sampler.suggest()
        if candidate is None:
            self.exhausted = True
            return Searcher.FINISHED
        self.suggested += 1
        self.candidates[trial_id] = candidate
        return {"candidate": candidate.to_dict()}

    def on_trial_complete(self, trial_id: str, result: Mapping | None = None, error: bool = False):
        candidate = self.candidates.pop(trial_id, None)
        if candidate is not None:
            self.sampler.observe(candidate, None if error or not result else result)


class LedgerCallback(tune.Callback):
    """Records every ended trial in the ledger and prints progress."""

    def __init__(self, ledger: Ledger, sampler: Sampler, space: SearchSpace, total: int, done: int,
                 echo: Callable[[str], None]):
        self.ledger, self.sampler, self.space = ledger, sampler, space
        self.total, self.done, self.echo = total, done, echo

    def on_trial_start(self, iteration, trials, trial, **info):
        candidate = Candidate.from_dict(trial.config["candidate"])
        self.echo(f"trial {trial.trial_id} {candidate.key} started: {candidate.frames}x{candidate.resolution} "
                  f"clip, stride {candidate.frame_stride}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.echo(f"trial {trial.trial_id} epoch {result.get('epoch')}: top1={result['top1']:.3f} "
                  f"reward={result['reward']:.3f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        epochs = self.space.budget["epochs"]
        status = STOPPED if result.get("epoch") is not None and result["epoch"] < epochs else OK
        self._record(trial, result, status, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, trial.last_result or {}, FAILED, _error_text(trial))

    def _record(self, trial, result: Mapping, status: str, error: str | None):
        candidate = Candidate.from_dict(trial.config["candidate"])
        location = getattr(trial.temporary_state, "location", None)
        fallback = {"hostname": getattr(location, "hostname", None), "pid": getattr(location, "pid", None)}
        row = trial_row(trial.trial_id, candidate, result if "top1" in result else None, status=status,
                        error=error, backend=BACKEND, location=fallback)
        self.ledger.append(row)
        self.done += 1
        self.ledger.save_state(rejected=self.sampler.rejected)
        self.echo(f"[{self.done}/{self.total}] " + format_row(row))


def _error_text(trial) -> str:
    """The exception the trial raised, as 'Type: message' (the traceback stays in the trial folder)."""
    path = trial.pickled_error_file
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            error = cloudpickle.load(f)
        cause = getattr(error, "cause", None) or error
        return f"{type(cause).__name__}: {cause}"
    return "the trial's process died (no exception was recorded)"


def _fitting_trials(settings) -> int:
    """How many trials the cluster holds at once. Tune asks a custom searcher for one trial at a
    time unless told, so without this the trials would run one after another."""
    resources = ray.cluster_resources()
    limits = [resources.get(name, 0) / need for name, need in (("CPU", settings.cpus), ("GPU", settings.gpus))
              if need]
    return max(1, int(min(limits, default=1)))


def _trainable(config: Mapping, trial_fn: TrialFn, space: SearchSpace) -> None:
    os.environ.pop("TF_USE_LEGACY_KERAS", None)   # Ray Train sets it, which would load tf_keras, not Keras 3
    if not ray.get_gpu_ids():
        keep_off_gpus()
    candidate = Candidate.from_dict(config["candidate"])
    location = trial_location()
    run_trial(trial_fn, candidate, space, lambda row: tune.report({**row, **location}))


def run(space: SearchSpace, sampler: Sampler, ledger: Ledger, trial_fn: TrialFn, *, remaining: int,
        done: int, total: int, address: str | None = None, num_cpus: int | None = None,
        echo: Callable[[str], None] = print) -> dict[str, float]:
    """Runs up to ``remaining`` new trials on Ray Tune; results land in ``ledger``. Raises
    KeyboardInterrupt where Ctrl-C stopped the run (Tune itself ends it quietly).

    A Ray it started shuts down in the background: ``wait_stopped()`` waits for that.
    Returns the seconds of its phases: {"ray_start": ..., "trials": ...}.
    """
    global _stopping
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # no result boxes: progress lines come from the callback
    began = time.monotonic()
    started = connect(address, num_cpus)
    timings = {"ray_start": time.monotonic() - began}
    quiet = [logging.getLogger(name) for name in ("ray.tune.execution.tune_controller", "ray.tune.tune")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:   # failed trials are reported once, by the ledger callback, not as tracebacks
        logger.setLevel(logging.CRITICAL)
    try:
        settings = space.settings
        trainable = tune.with_resources(tune.with_parameters(_trainable, trial_fn=trial_fn, space=space),
                                        {"cpu": settings.cpus, "gpu": settings.gpus})
        metric = "top1" if settings.algorithm == "multi_objective" else space.objective.metric
        scheduler = None
        if settings.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="epoch", max_t=space.budget["epochs"], grace_period=1,
                                      reduction_factor=2)
        searcher = CandidateSearcher(sampler, remaining, metric)
        recorder = LedgerCallback(ledger, sampler, space, total, done, echo)
        runs = ledger.folder / "ray"
        segment = len(list(runs.glob("run-*"))) if runs.exists() else 0
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=metric, mode="max", search_alg=searcher,
                scheduler=scheduler, num_samples=remaining,
                max_concurrent_trials=settings.max_concurrent or _fitting_trials(settings),
                reuse_actors=True, trial_dirname_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(
                name=f"run-{segment}", storage_path=str(runs.resolve()), verbose=0,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                callbacks=[recorder]),
        )
        tuner.fit()
        # Tune ends a run on Ctrl-C as if it were done: trials it started and never ended, or a
        # sampler that had candidates left, tell an interrupted run.
        if recorder.done - done < (remaining if not searcher.exhausted else searcher.suggested):
            raise KeyboardInterrupt
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
        timings["trials"] = time.monotonic() - began - timings["ray_start"]
        if started:
            _stopping = threading.Thread(target=shutdown, name="ray-shutdown")
            _stopping.start()
    return timings
