"""KerasTuner backend: the same space, samplers, trial contract and ledger, in one process.

For single-machine users without Ray: KerasTuner's search loop asks an ``Oracle`` for trials
and runs them one after another here. The oracle draws from the same sampler as the Ray
backend, so the cost filter, the algorithms and resuming behave the same.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import keras_tuner
from keras_tuner.engine.base_tuner import BaseTuner
from keras_tuner.engine.trial import TrialStatus

from search.candidate import Candidate
from search.results import FAILED, OK, Ledger, format_row, trial_row
from search.samplers import Sampler
from search.space import SearchSpace
from search.trial import TrialFn, run_trial, trial_location

BACKEND = "kerastuner"


class SamplerOracle(keras_tuner.Oracle):
    """A KerasTuner oracle whose trials are the sampler's candidates (one value: the candidate)."""

    def __init__(self, sampler: Sampler, max_trials: int, metric: str):
        super().__init__(objective=keras_tuner.Objective(metric, "max"), max_trials=max_trials,
                         max_consecutive_failed_trials=max_trials + 1)
        self.sampler = sampler

    def populate_space(self, trial_id):
        candidate = self.sampler.suggest()
        if candidate is None:
            return {"status": TrialStatus.STOPPED, "values": None}
        return {"status": TrialStatus.RUNNING, "values": {"candidate": json.dumps(candidate.to_dict())}}


class SpaceTuner(BaseTuner):
    """Runs each trial with the shared trial contract and records it in the ledger."""

    def __init__(self, oracle: SamplerOracle, trial_fn: TrialFn, space: SearchSpace, ledger: Ledger,
                 total: int, done: int, echo: Callable[[str], None]):
        super().__init__(oracle=oracle, hypermodel=None, directory=str(ledger.folder),
                         project_name="kerastuner", overwrite=True)
        self.trial_fn, self.space, self.ledger = trial_fn, space, ledger
        self.total, self.done, self.echo = total, done, echo

    def run_trial(self, trial, *args, **kwargs):
        candidate = Candidate.from_dict(json.loads(trial.hyperparameters.values["candidate"]))
        number = f"kt{self.done + 1:04d}"     # KerasTuner's own ids restart in every run of a resumed search
        location = trial_location()
        last: dict = {}

        def report(row):
            last.update(row)
            self.echo(f"trial {number} epoch {row.get('epoch')}: top1={row['top1']:.3f} "
                      f"reward={row['reward']:.3f}")

        self.echo(f"trial {number} {candidate.key} started: {candidate.frames}x"
                  f"{candidate.resolution} clip, stride {candidate.frame_stride}")
        try:
            final = run_trial(self.trial_fn, candidate, self.space, report)
        except Exception as err:
            self._record(trial_row(number, candidate, last or None, status=FAILED,
                                   error=f"{type(err).__name__}: {err}", backend=BACKEND, location=location))
            self.oracle.sampler.observe(candidate, None)
            raise keras_tuner.errors.FailedTrialError(f"{type(err).__name__}: {err}") from err
        self._record(trial_row(number, candidate, final, status=OK, backend=BACKEND,
                               location=location))
        self.oracle.sampler.observe(candidate, final)
        return {name: float(value) for name, value in final.items()
                if name in ("top1", "top5", "reward", "macs") and value is not None}

    def _record(self, row):
        self.ledger.append(row)
        self.ledger.save_state(rejected=self.oracle.sampler.rejected)
        self.done += 1
        self.echo(f"[{self.done}/{self.total}] " + format_row(row))


def run(space: SearchSpace, sampler: Sampler, ledger: Ledger, trial_fn: TrialFn, *, remaining: int,
        done: int, total: int, echo: Callable[[str], None] = print) -> dict[str, float]:
    """Runs up to ``remaining`` new trials in this process; results land in ``ledger``.

    Returns the seconds it took, as {"trials": ...}.
    """
    began = time.monotonic()
    metric = "top1" if space.settings.algorithm == "multi_objective" else space.objective.metric
    oracle = SamplerOracle(sampler, remaining, metric)
    oracle.verbose = 0
    tuner = SpaceTuner(oracle, trial_fn, space, ledger, total, done, echo)
    tuner.search()
    return {"trials": time.monotonic() - began}
