"""One search from start to finish: space file -> cost check -> sampler -> backend -> results.

    space YAML --load_space--> SearchSpace --check_feasible--> (fails here if no point fits)
      --make_sampler + replay(ledger) + plan--> Sampler --backend.run--> ledger.jsonl --> tables, plot, best spec

The driver itself trains nothing and never imports TensorFlow (only trials do), unless the data
must be read to count its classes; random and grid samplers draw all trials up front and start
the largest first (``Sampler.plan``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from search.candidate import check_feasible
from search.outcome import SearchError, SearchResult
from search.results import (FAILED, Ledger, check_output_folder, row_candidate, row_result, summary_table,
                            write_results)
from search.samplers import make_sampler
from search.space import SearchSpace, dump_space, load_space, space_from_dict, space_to_dict
from search.trial import TrialFn

if TYPE_CHECKING:
    from search.oneshot.settings import InputSetting

BACKENDS = ("ray", "kerastuner")


class SearchInterrupted(KeyboardInterrupt):
    """A search stopped by Ctrl-C once the trials that finished are written; says how to continue."""


def with_overrides(space: SearchSpace, **overrides) -> SearchSpace:
    """The space with command-line overrides of its ``search`` section (None keeps the file's)."""
    changes = {key: value for key, value in overrides.items() if value is not None}
    if not changes:
        return space
    data = space_to_dict(space)
    for key, value in changes.items():
        if key in ("cpus", "gpus"):
            data["search"]["resources"][key] = value
        else:
            data["search"][key] = value
    return space_from_dict(data, source=f"{space.source} (with {', '.join(sorted(changes))} overridden)")


def run_search(space: "SearchSpace | str | Path", *, backend: str = "ray", output_dir: "str | Path" = "results",
               resume: bool = False, address: str | None = None, num_trials: int | None = None,
               algorithm: str | None = None, scheduler: str | None = None, cpus: float | None = None,
               gpus: float | None = None, num_cpus: int | None = None, trial_fn: TrialFn | None = None,
               workers: int | None = None, retrain: bool = False, report_at: "InputSetting | None" = None,
               echo: Callable[[str], None] = print) -> SearchResult:
    """Searches ``space`` and writes ``<output_dir>/<space name>/``; see ``search.results``.

    Args:
      backend: 'ray' (local Ray, or the cluster at ``address``) or 'kerastuner' (this process).
      resume: continue the search recorded in the output folder; finished trials are kept and
        not run again. With it, a folder that holds no search is an error; without it, a folder
        that already holds trials is.
      num_trials, algorithm, scheduler, cpus, gpus: override the file's ``search`` section.
      num_cpus: CPUs of the local Ray (default: all).
      trial_fn: the trial contract (``search.trial``); default trains with ``movinet.train``.
      workers, retrain: one-shot searches only (``algorithm: oneshot``, which
        ``search.oneshot.distributed.run_oneshot`` runs): data-parallel workers of each supernet
        (override search.workers; cpus and gpus are then per worker), and whether to train the
        found specs from scratch afterwards.
      report_at: one-shot only: the input to report the found specs at (a proxy search's real clip).

    Raises:
      SearchError: the search cannot start, or every one of its trials failed (after the
        results are written).
      SearchInterrupted: Ctrl-C stopped it (after the results of the finished trials are written).
    """
    began = time.monotonic()
    if backend not in BACKENDS:
        raise SearchError(f"backend={backend!r}: expected one of {list(BACKENDS)}")
    if address is not None and backend != "ray":
        raise SearchError(f"--address joins a Ray cluster: it needs --backend ray, not {backend}")
    space = with_overrides(load_space(space), num_trials=num_trials, algorithm=algorithm,
                           scheduler=scheduler, cpus=cpus, gpus=gpus, workers=workers)
    if space.settings.algorithm == "oneshot":
        if backend != "ray" or trial_fn is not None or num_trials is not None:
            raise SearchError("a one-shot search trains one supernet per input setting on Ray: "
                              "--backend, --num-trials and a trial function do not apply to it")
        from search.oneshot.distributed import run_oneshot

        return run_oneshot(space, output_dir=output_dir, address=address, num_cpus=num_cpus, resume=resume,
                           retrain=retrain, report_at=report_at, echo=echo)
    if workers is not None or retrain or report_at is not None:
        raise SearchError("--workers, --retrain and a proxy clip belong to a one-shot search (--algorithm oneshot)")
    if trial_fn is None:
        from search.training import check_training_sections, train_and_score as trial_fn

        space = check_training_sections(space)
    folder = Path(output_dir) / space.name
    ledger = Ledger(folder)
    rows = ledger.rows()
    _check_folder(folder, space, rows, resume)
    acceptance = check_feasible(space)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(dump_space(space))

    sampler = make_sampler(space)
    sampler.rejected = ledger.state().get("rejected", 0) if resume else 0
    for row in rows:
        sampler.replay(row_candidate(row), row_result(row))
    total = space.settings.num_trials
    remaining = total - len(rows)
    planned = sampler.plan(remaining) if remaining > 0 else []
    ledger.save_state(rejected=sampler.rejected)
    low, high = space.objective.bounds
    echo(f"search {space.name}: {space.size():,} points, about {acceptance:.0%} of them within "
         f"{low / 1e6:.2f}M-{high / 1e6:.2f}M multiply-adds; {space.settings.algorithm} on {backend}, "
         f"{remaining} of {total} trials to run" + (f" ({len(rows)} already finished)" if rows else "")
         + (", the most multiply-adds first" if planned else ""))
    if backend == "ray":
        from search import ray_backend as backend_module
    else:
        from search import kerastuner_backend as backend_module
    timings = {"prepare": time.monotonic() - began}
    interrupted = False
    try:
        if remaining > 0:
            cluster = {"address": address, "num_cpus": num_cpus} if backend == "ray" else {}
            try:
                timings.update(backend_module.run(space, sampler, ledger, trial_fn, remaining=remaining,
                                                  done=len(rows), total=total, echo=echo, **cluster))
            except KeyboardInterrupt:   # Ctrl-C: the trials that finished are written all the same
                interrupted = True
        writing = time.monotonic()
        rows = ledger.rows()
        written = write_results(folder, rows, space.objective)
        timings["results"] = time.monotonic() - writing
    finally:
        if backend == "ray":   # a local Ray shuts down while the results are written
            timings["ray_stop"] = backend_module.wait_stopped()
    echo(summary_table(rows, space.objective, sampler.rejected))
    if "best_spec.yaml" in written:
        echo(f"best spec: {written['best_spec.yaml']}")
    echo(f"results: {folder}")
    if interrupted:
        raise SearchInterrupted(f"interrupted after {len(rows)} of {total} trials finished; --resume continues "
                                f"the search in {folder}")
    if rows and all(row["status"] == FAILED for row in rows):
        raise SearchError(f"all {len(rows)} trials failed, the first with {rows[0]['error']}; "
                          f"their errors are in {folder / 'trials.csv'}")
    return SearchResult(folder=folder, rows=rows, rejected=sampler.rejected, written=written, timings=timings)


def holds_search(folder: Path) -> bool:
    """Whether ``folder`` holds a search that ``resume`` continues: a search writes its space first."""
    return (folder / "space.yaml").exists()


def _check_folder(folder: Path, space: SearchSpace, rows: list[dict], resume: bool) -> None:
    check_output_folder(folder, space, resume, kind="search", resumable=holds_search(folder),
                        held=f"{len(rows)} finished trials" if rows else None)
