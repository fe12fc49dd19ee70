"""The Optuna samplers: what Optuna is told of each trial, and TPE learning from it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from search import decode, load_space
from search.candidate import candidate_macs
from search.samplers import make_sampler

TINY = Path(__file__).resolve().parent / "tiny.yaml"


def feed(sampler, space, trials, top1_of):
    """Runs ``trials`` trials through ``sampler`` with top-1 ``top1_of(candidate)``; their results by key."""
    results = {}
    for _ in range(trials):
        candidate = sampler.suggest()
        macs = candidate_macs(space, candidate)
        top1 = top1_of(candidate)
        results[candidate.key] = {"top1": top1, "macs": macs, "reward": space.objective.reward(top1, macs)}
        sampler.observe(candidate, results[candidate.key])
    return results


def without_se(candidate):
    return candidate.params["options.se_type"] == "none"


@pytest.mark.parametrize("algorithm", ["tpe", "multi_objective"])
def test_optuna_is_told_each_trials_metrics_and_each_rejected_cost(algorithm):
    """Every Optuna trial holds what its candidate scored (reward; or top-1 and multiply-adds), a
    candidate outside the cost window its cost with top-1 0, a failed trial FAIL."""
    from optuna.trial import TrialState

    space = load_space(TINY)
    sampler = make_sampler(space, algorithm)
    results = feed(sampler, space, 12, lambda c: 0.8 if without_se(c) else 0.3)
    failed = sampler.suggest()
    sampler.observe(failed, None)
    told = sampler.study.trials
    assert len(told) >= 13 + sampler.rejected
    for trial in told:
        candidate = decode(space, trial.params)
        if candidate.key == failed.key:
            assert trial.state == TrialState.FAIL
            continue
        macs = candidate_macs(space, candidate)
        result = results.get(candidate.key) if space.objective.accepts(macs) else \
            {"top1": 0.0, "macs": macs, "reward": space.objective.reward(0.0, macs)}
        expected = [result["top1"], result["macs"]] if algorithm == "multi_objective" else [result["reward"]]
        assert trial.state == TrialState.COMPLETE and trial.values == pytest.approx(expected), trial.params


def test_tpe_leaves_its_random_start_and_proposes_what_scored():
    """Candidates without SE score 0.9, the others 0.2: after Optuna's 10 random start-up trials
    TPE proposes SE 'none' far above the 1/2 of a random draw (0.80 here; 45 of 56 proposals
    by chance has p < 1e-5)."""
    space = load_space(TINY)
    sampler = make_sampler(space, "tpe")
    feed(sampler, space, 30, lambda c: 0.9 if without_se(c) else 0.2)
    proposed = [trial.params["options.se_type"] == "none" for trial in sampler.study.trials]
    assert len(proposed) > 40
    assert sum(proposed[10:]) / len(proposed[10:]) > 0.7


@pytest.mark.parametrize("algorithm", ["tpe", "multi_objective"])
def test_a_candidate_proposed_again_while_it_trains_waits_for_its_result(algorithm):
    """Two trials at a time, as two Ray slots run them: a proposal of the candidate still training
    is told that candidate's result when it ends. Told FAIL at once, it left TPE's model unchanged,
    so multi-objective TPE proposed the same candidate ~5000 times (minutes) and the search ended
    early as if the space were spent."""
    from optuna.trial import TrialState

    space = load_space(TINY)
    sampler = make_sampler(space, algorithm)
    pending, results = [sampler.suggest()], {}
    for _ in range(12):
        pending.append(sampler.suggest())
        assert pending[-1] is not None, "the sampler gave up with most of the space untried"
        candidate = pending.pop(0)
        macs = candidate_macs(space, candidate)
        top1 = 0.3 + 0.6 * random.Random(candidate.key).random()
        results[candidate.key] = {"top1": top1, "macs": macs, "reward": space.objective.reward(top1, macs)}
        sampler.observe(candidate, results[candidate.key])
    told = sampler.study.trials
    assert len(told) < 100
    assert all(trial.state != TrialState.FAIL for trial in told)
    assert sum(trial.state == TrialState.RUNNING for trial in told) >= 1     # the one still training
