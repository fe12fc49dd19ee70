"""The one-shot search on Ray: one Ray Tune trial per input setting, each a data-parallel supernet.

    run_oneshot(space) --check the settings and that the workers fit the cluster--> (fails before Ray trains)
      --connect (local Ray, or the cluster at --address)--> Tuner: one trial per pending InputSetting
          _drive_setting (0 CPU) --> TensorflowTrainer(num_workers, CPUs/GPUs per worker)
              _train_worker on every worker: MultiWorkerMirroredStrategy + train_supernet(folder, ...)
                  chief's progress --Ray queue--> the driver's progress lines
              rank 0's result and files --report with a checkpoint--> the trial's report
      --SettingsCallback: each finished setting's files--> <output_dir>/<name>/<setting key>/
      --search.oneshot.results--> best_spec.yaml, steps.png, summary.csv
      --retrain: the found specs as ordinary trials (search.ray_backend.run)--> trials.csv, ledger.jsonl

Every worker runs the same program, checkpoints included (MultiWorkerMirroredStrategy's collectives
need each worker to take part); only the chief writes the tables. A single worker runs the same
strategy with one replica, so there is one code path.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping

import ray
from ray import tune

from search.candidate import Candidate
from search.outcome import SearchError, SearchResult
from search.results import Ledger, check_output_folder, summary_table, write_results
from search.samplers import Sampler
from search.space import SearchSpace, dump_space, load_space
from search.oneshot.results import (RESULT_FILE, TABLES, finished_settings, found_candidate, write_setting,
                                    write_summary)
from search.oneshot.settings import InputSetting, input_settings, oneshot_settings


def run_oneshot(space: "SearchSpace | str | Path", *, output_dir: "str | Path" = "results",
                workers: int | None = None, cpus_per_worker: float | None = None,
                gpus_per_worker: float | None = None, address: str | None = None, num_cpus: int | None = None,
                resume: bool = False, retrain: bool = False, report_at: InputSetting | None = None,
                echo: Callable[[str], None] = print) -> SearchResult:
    """Trains one supernet per input setting of ``space`` and writes ``<output_dir>/<name>/``.

    Args:
      workers, cpus_per_worker, gpus_per_worker: data-parallel workers of each supernet and what
        each holds (default: the file's ``search.workers`` and ``search.resources``).
      address: join the Ray cluster there (default: start a local Ray of ``num_cpus`` CPUs).
      resume: continue from the last checkpoints in the output folder; finished settings are kept.
      retrain: train each found spec from scratch as an ordinary trial (``search.training``).
      report_at: the input to report the found specs at (a proxy search's real input); default:
        the input each was searched at.
    """
    from search.training import check_training_sections

    began = time.monotonic()
    space = check_training_sections(load_space(space))
    oneshot_settings(space)
    settings = space.settings
    resources = Resources(workers=workers or settings.workers,
                          cpus=settings.cpus if cpus_per_worker is None else cpus_per_worker,
                          gpus=settings.gpus if gpus_per_worker is None else gpus_per_worker)
    resources.check()
    folder = Path(output_dir) / space.name
    done = _check_folder(folder, space, resume)
    pending = [s for s in input_settings(space) if s.key not in done]
    outcomes = {key: json.loads((folder / key / RESULT_FILE).read_text()) for key in done}
    candidates = {key: found_candidate(space, outcome) for key, outcome in outcomes.items()}
    echo(f"one-shot search {space.name}: {len(pending)} of {len(input_settings(space))} input settings to "
         f"train ({', '.join(s.key for s in pending) or 'none'}), each a supernet on {resources}; target "
         f"{space.objective.target_macs / 1e6:.2f}M multiply-adds")
    timings = {"prepare": time.monotonic() - began}
    failures = {}
    if pending or (retrain and _untrained(folder, candidates)):
        with _cluster(address, num_cpus, resources):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "space.yaml").write_text(dump_space(space))
            if pending:
                ran, failures = _train_settings(space, pending, folder, resources, resume, echo)
                outcomes.update(ran)
                candidates.update({key: found_candidate(space, outcome) for key, outcome in ran.items()})
            timings["supernets"] = time.monotonic() - began - sum(timings.values())
            if retrain:
                _retrain(space, folder, candidates, address, num_cpus, echo)
        timings["retrain"] = time.monotonic() - began - sum(timings.values())
    writing = time.monotonic()
    keys = {c.key for c in candidates.values()}
    rows = [row for row in Ledger(folder).rows() if row["key"] in keys] if retrain else []
    written = write_summary(folder, space, outcomes, candidates, rows, report_at)
    if rows:
        written.update(write_results(folder, rows, space.objective))
        echo(summary_table(rows, space.objective, rejected=0))
    timings["results"] = time.monotonic() - writing
    if "summary.txt" in written:
        echo(written["summary.txt"].read_text().rstrip())
    if failures:
        raise SearchError("; ".join(f"input setting {key} failed: {error}" for key, error in failures.items())
                          + f" (the other settings' results are in {folder}; --resume retries the failed ones)")
    echo(f"results: {folder}")
    return SearchResult(folder=folder, rows=rows, rejected=0, written=written, timings=timings)


@contextlib.contextmanager
def _cluster(address: str | None, num_cpus: int | None, resources: "Resources"):
    """Ray for the search, checked to hold one supernet's workers at once; a local Ray started here
    (none runs and no ``address``) is checked before it starts and stopped after."""
    from search.ray_backend import connect, shutdown

    if address is None and not ray.is_initialized() and not resources.gpus:
        cpus = num_cpus or os.cpu_count() or 1
        resources.check_fits([{"CPU": float(cpus)}], f"the local Ray ({cpus} CPUs, --num-cpus)")
    started = connect(address, num_cpus)
    try:
        resources.check_fits(_alive_nodes(), f"the Ray cluster at {address}" if address else "the Ray cluster")
        yield
    finally:
        if started:
            shutdown()


class Resources:
    """What each supernet holds: ``workers`` data-parallel workers of ``cpus`` CPUs and ``gpus`` GPUs."""

    def __init__(self, workers: int, cpus: float, gpus: float):
        self.workers, self.cpus, self.gpus = workers, float(cpus), float(gpus)

    def __str__(self) -> str:
        gpus = f" + {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.workers} worker{'s' * (self.workers > 1)} x {self.cpus:g} CPU{gpus}"

    def check(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise SearchError(f"--workers {self.workers!r}: expected a positive integer")
        if not self.cpus > 0:
            raise SearchError(f"--cpus {self.cpus:g}: every worker needs CPUs (a positive number)")
        if self.gpus < 0:
            raise SearchError(f"--gpus {self.gpus:g}: expected a number >= 0")

    def per_node(self, node: Mapping[str, float]) -> int:
        """How many workers fit on a node with these resources."""
        fits = [node.get(name, 0.0) / need for name, need in (("CPU", self.cpus), ("GPU", self.gpus)) if need]
        return int(math.floor(min(fits) + 1e-9))

    def supernets_at_once(self, nodes: list[Mapping[str, float]]) -> int:
        return max(1, sum(self.per_node(node) for node in nodes) // self.workers)

    def check_fits(self, nodes: list[Mapping[str, float]], where: str) -> None:
        """Fails unless every worker of one supernet fits on the nodes at the same time: MWMS's
        collectives wait for all workers, so a worker that cannot be placed stalls the others."""
        places = sum(self.per_node(node) for node in nodes)
        if places >= self.workers:
            return
        cpus = sum(node.get("CPU", 0.0) for node in nodes)
        gpus = sum(node.get("GPU", 0.0) for node in nodes)
        raise SearchError(
            f"--workers {self.workers} x --cpus {self.cpus:g}" + (f" x --gpus {self.gpus:g}" if self.gpus else "")
            + f" does not fit {where}: {cpus:g} CPUs" + (f" and {gpus:g} GPUs" if self.gpus else "")
            + f" on {len(nodes)} node{'s' * (len(nodes) > 1)} hold {places} such worker{'s' * (places != 1)}; "
            "give fewer workers or fewer CPUs per worker")


def _alive_nodes() -> list[dict]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _check_folder(folder: Path, space: SearchSpace, resume: bool) -> set[str]:
    """The settings already finished in ``folder``; without ``resume`` there must be none."""
    done = finished_settings(folder)
    started = sorted(p.name for p in folder.glob("r*_f*_s*") if p.is_dir()) if folder.exists() else []
    check_output_folder(folder, space, resume, kind="one-shot search", resumable=bool(started),
                        held=f"a one-shot search ({', '.join(started)})" if started else None,
                        continue_phrase="continue it")
    return done


def _train_settings(space: SearchSpace, pending: list[InputSetting], folder: Path, resources: Resources,
                    resume: bool, echo: Callable[[str], None]) -> tuple[dict, dict]:
    """One Tune trial per setting; returns ({key: outcome}, {key: error})."""
    from ray.util.queue import Queue

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # no result boxes: the callback prints progress
    # Tune's own loggers would copy each setting's tables into TensorBoard and CSV files of its own.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    progress = Queue(actor_options={"num_cpus": 0})
    callback = SettingsCallback(folder, progress, echo)
    runs = folder / "ray"
    segment = len(list(runs.glob("run-*"))) if runs.exists() else 0
    storage = str((runs / f"run-{segment}" / "train").resolve())
    driver = tune.with_parameters(_drive_setting, space=space, folder=str(folder.resolve()), resources=resources,
                                  resume=resume, progress=progress, storage=storage)
    # A trial only waits on its trainer, whose workers hold the CPUs: asking for a CPU here would
    # leave a 2-CPU machine one short for 2 workers. Tune refuses an empty request, so it asks for
    # one byte of memory instead.
    driver = tune.with_resources(driver, {"cpu": 0, "memory": 1})
    tuner = tune.Tuner(
        driver,
        param_space={"setting": tune.grid_search([vars(s) for s in pending])},
        tune_config=tune.TuneConfig(max_concurrent_trials=resources.supernets_at_once(_alive_nodes()),
                                    trial_dirname_creator=lambda trial: InputSetting(**trial.config["setting"]).key),
        run_config=tune.RunConfig(name=f"run-{segment}", storage_path=str(runs.resolve()), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                  callbacks=[callback]))
    try:
        tuner.fit()
    finally:
        callback.drain()
        ray.kill(progress.actor)
    return callback.outcomes, callback.failures


def _drive_setting(config: Mapping, *, space: SearchSpace, folder: str, resources: Resources, resume: bool,
                   progress, storage: str) -> None:
    """One Tune trial: trains the supernet of one input setting on a TensorflowTrainer, reports its outcome."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    setting = InputSetting(**config["setting"])
    per_worker = {"CPU": resources.cpus, **({"GPU": resources.gpus} if resources.gpus else {})}
    trainer = TensorflowTrainer(
        _train_worker,
        train_loop_config={"space": space, "setting": vars(setting), "folder": str(Path(folder) / setting.key),
                           "cpus": resources.cpus, "resume": resume, "progress": progress},
        scaling_config=ScalingConfig(num_workers=resources.workers, use_gpu=resources.gpus > 0,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=setting.key, storage_path=storage))
    try:
        result = trainer.fit()
    except Exception as err:   # Ray Train's TrainingFailedError wraps the workers' exceptions
        tune.report({"error": _failure_text(err)})
        return
    tune.report(dict(result.metrics))


def _failure_text(err: Exception) -> str:
    """'Type: message' of the first failed worker's exception (the traceback stays in Ray's logs)."""
    failures = getattr(err, "worker_failures", None) or {}
    cause = failures[min(failures)] if failures else getattr(err, "controller_failure", err)
    cause = getattr(cause, "cause", None) or cause
    message = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {message[-1] if message else ''}"


def _train_worker(config: Mapping) -> None:
    """Every worker of one supernet: the strategy, the shared loop, rank 0's report with a checkpoint."""
    os.environ.pop("TF_USE_LEGACY_KERAS", None)   # Ray Train sets it, which would load tf_keras, not Keras 3
    from search.trial import hold_threads

    hold_threads(config["cpus"])
    import tensorflow as tf
    from ray import train

    from search.oneshot.loop import train_supernet

    rank = train.get_context().get_world_rank()
    setting = InputSetting(**config["setting"])
    folder = Path(config["folder"])
    progress = config["progress"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()   # reads TF_CONFIG, which Ray Train set

    def forward(metrics: Mapping) -> None:
        progress.put_nowait({"setting": setting.key, **metrics})

    outcome = train_supernet(config["space"], setting, folder=folder, seed=config["space"].settings.seed,
                             strategy=strategy, resume=config["resume"], on_progress=forward)
    # Ray Train keeps only the metrics reported with a checkpoint, and every worker must report.
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint, metrics = None, {}
        if rank == 0:
            files = {name: (folder / name).read_text() for name in TABLES if (folder / name).exists()}
            outcome = {"setting": vars(setting), **json.loads(json.dumps(outcome, default=_plain))}
            metrics = {"outcome": outcome, "files": files}
            (Path(scratch) / RESULT_FILE).write_text(json.dumps(metrics["outcome"]))
            checkpoint = train.Checkpoint.from_directory(scratch)
        train.report(metrics, checkpoint=checkpoint)


def _plain(value):
    """NumPy and TensorFlow scalars and arrays as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "numpy"):
        return value.numpy().tolist()
    return str(value)


class SettingsCallback(tune.Callback):
    """Prints the chief's progress as it comes, and writes each setting's outcome the moment it ends.

    The tables travel back in the trial's report rather than through a shared disk, so settings
    trained on other machines of a cluster land in this driver's results folder too.
    """

    def __init__(self, folder: Path, progress, echo: Callable[[str], None]):
        self.folder, self.progress, self.echo = folder, progress, echo
        self.outcomes: dict[str, dict] = {}
        self.failures: dict[str, str] = {}

    def drain(self) -> None:
        for item in self.progress.get_nowait_batch(self.progress.qsize()):
            self.echo(format_progress(item))

    def on_step_begin(self, iteration, trials, **info):
        self.drain()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = InputSetting(**trial.config["setting"]).key
        self.drain()
        if "error" in result:
            self.failures[key] = result["error"]
            self.echo(f"[{key}] failed: {result['error']}")
            return
        if "outcome" not in result:
            return
        outcome = result["outcome"]
        write_setting(self.folder / key, outcome, result.get("files", {}))
        self.outcomes[key] = outcome
        self.echo(f"done: {format_progress({**outcome, 'setting': key})}")

    def on_trial_error(self, iteration, trials, trial, **info):
        key = InputSetting(**trial.config["setting"]).key
        self.failures.setdefault(key, "the trial's process died (no error was reported)")


def format_progress(item: Mapping) -> str:
    """One line of a supernet's progress: step, reward, sampled cost, entropy, supernet top-1."""
    parts = [f"[{item.get('setting', '?')}]"]
    if "step" in item:
        parts.append(f"step {item['step']}" + (f"/{item['steps']}" if "steps" in item else ""))
    for name, label, fmt in (("reward", "reward", ".3f"), ("macs", "macs", None), ("target_macs", "target", None),
                             ("entropy", "entropy", ".3f"), ("supernet_top1", "supernet top1", ".3f"),
                             ("train_loss", "loss", ".3f"), ("seconds", "s/step", ".2f")):
        value = item.get(name)
        if isinstance(value, (int, float)):
            text = f"{value / 1e6:.2f}M" if fmt is None else format(value, fmt)
            parts.append(f"{label}={text}")
    return " ".join(parts)


class FoundSampler(Sampler):
    """Hands the multi-trial backend the specs a one-shot search found, each once, whatever their
    cost (a retraining measures the found architecture, not the cost window's candidates)."""

    def __init__(self, space: SearchSpace, candidates: list[Candidate]):
        super().__init__(space)
        self._planned = list(candidates)

    def _propose(self):
        return None


def _untrained(folder: Path, candidates: Mapping[str, Candidate]) -> list[Candidate]:
    """The found specs the ledger holds no trial of yet, each once."""
    trained = {row["key"] for row in Ledger(folder).rows()}
    return list({c.key: c for c in candidates.values() if c.key not in trained}.values())


def _retrain(space: SearchSpace, folder: Path, candidates: Mapping[str, Candidate], address: str | None,
             num_cpus: int | None, echo: Callable[[str], None]) -> None:
    """Trains each found spec from scratch as a trial of the multi-trial search (into its ledger)."""
    from search import ray_backend
    from search.training import train_and_score

    todo = _untrained(folder, candidates)
    if not todo:
        return
    done = len(Ledger(folder).rows())
    echo(f"retraining {len(todo)} found spec{'s' * (len(todo) > 1)} from scratch "
         f"({space.budget['epochs']} epochs each)")
    ray_backend.run(space, FoundSampler(space, todo), Ledger(folder), train_and_score, remaining=len(todo), done=done,
                    total=done + len(todo), address=address, num_cpus=num_cpus, echo=echo)
