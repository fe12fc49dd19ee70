"""Samplers: which candidate to train next (random, grid, Optuna TPE, Optuna multi-objective).

Every sampler shares one contract, whatever backend runs the trials: ``suggest()`` returns a
new candidate inside the cost window (or None when the space has no more), ``observe()`` takes
a finished trial's metrics back. Candidates outside the window are rejected, and counted, before
anything is built; a candidate already trained is never proposed again.

Samplers whose draws do not depend on results (random, grid) can ``plan()`` a search's trials up
front and hand them out longest first (see ``Sampler.plan``); model-based ones (TPE) cannot.
"""

from __future__ import annotations

import itertools
import random
from typing import Any, Iterator, Mapping, Sequence

from search.candidate import Candidate, candidate_macs, decode
from search.space import SearchSpace, SpaceError

# Consecutive proposals that were out of the window or already tried before the space counts as spent.
MAX_PROPOSALS = 5000


class Sampler:
    """The shared cost filter and memory of tried candidates; subclasses pick the points."""

    # True when the points drawn do not depend on the results fed back, so that drawing the next
    # trials all at once gives the same candidates as drawing them one by one.
    draws_ahead = False

    def __init__(self, space: SearchSpace):
        self.space = space
        self.rejected = 0
        self._tried: dict[str, Mapping | None] = {}    # key -> result (None while pending or failed)
        self._handles: dict[str, Any] = {}
        self._waiting: dict[str, list] = {}            # key -> handles of proposals made while it trains
        self._planned: list[Candidate] = []            # drawn by plan(), handed out first

    def suggest(self) -> Candidate | None:
        if self._planned:
            return self._planned.pop(0)
        return self._draw()

    def plan(self, count: int) -> list[Candidate]:
        """Draws the next ``count`` candidates now, to hand them out longest first; returns them in
        that order ([] for a sampler whose draws depend on results, which keeps drawing one by one).

        The longest-processing-time rule: when several trials run at once, starting the long ones
        first leaves the short ones for the end, so slots that run out of trials wait less for the
        last one to finish. Work is predicted by the cost model: a candidate's multiply-adds on its
        own clip (frames and resolution included), which every training and evaluation step
        repeats. The candidates are those ``count`` calls of ``suggest()`` would give, so the seed
        still fixes them; ties keep the order of the draws.
        """
        if not self.draws_ahead:
            return []
        drawn: list[tuple[int, Candidate]] = []
        while len(drawn) < count:
            candidate = self._draw()
            if candidate is None:
                break
            drawn.append((candidate_macs(self.space, candidate), candidate))
        drawn.sort(key=lambda pair: -pair[0])   # a stable sort: ties keep the order of the draws
        self._planned = [candidate for _, candidate in drawn]
        return list(self._planned)

    def _draw(self) -> Candidate | None:
        objective = self.space.objective
        for _ in range(MAX_PROPOSALS):
            proposal = self._propose()
            if proposal is None:
                return None
            point, handle = proposal
            candidate = decode(self.space, point)
            macs = candidate_macs(self.space, candidate)
            if not objective.accepts(macs):
                self.rejected += 1
                self._tell(handle, {"top1": 0.0, "macs": macs, "reward": objective.reward(0.0, macs)})
                continue
            if candidate.key in self._handles:         # still training: told its result when it ends
                self._waiting.setdefault(candidate.key, []).append(handle)
                continue
            if candidate.key in self._tried:
                self._tell(handle, self._tried[candidate.key])
                continue
            self._tried[candidate.key] = None
            self._handles[candidate.key] = handle
            return candidate
        return None

    def observe(self, candidate: Candidate, result: Mapping | None) -> None:
        """A trial ended: ``result`` holds its metrics (top1, macs, reward), None if it failed."""
        self._tried[candidate.key] = result
        for handle in (self._handles.pop(candidate.key, None), *self._waiting.pop(candidate.key, ())):
            self._tell(handle, result)

    def replay(self, candidate: Candidate, result: Mapping | None) -> None:
        """A trial finished in an earlier run of this search (resume): learn it, never re-run it."""
        self._tried[candidate.key] = result
        self._record(candidate.params, result)

    def _propose(self) -> tuple[dict, Any] | None:
        raise NotImplementedError

    def _tell(self, handle: Any, result: Mapping | None) -> None:
        """Feeds a result back to the point generator (model-based samplers learn from it)."""

    def _record(self, point: Mapping, result: Mapping | None) -> None:
        """Feeds a result of an earlier run back to the point generator."""


class RandomSampler(Sampler):
    draws_ahead = True

    def __init__(self, space: SearchSpace):
        super().__init__(space)
        self._rng = random.Random(space.settings.seed)

    def _propose(self):
        return self.space.sample(lambda param: self._rng.choice(param.choices)), None


class GridSampler(Sampler):
    """Every point in a fixed order; for small spaces only."""

    MAX_POINTS = 1_000_000
    draws_ahead = True

    def __init__(self, space: SearchSpace):
        super().__init__(space)
        if space.size() > self.MAX_POINTS:
            raise SpaceError(f"{space.source}: search.algorithm: grid search needs a small space; this one "
                             f"has {space.size():,} points (at most {self.MAX_POINTS:,}): use random or tpe")
        self._taken = 0
        self._points: Iterator[dict] = space.points()

    def _propose(self):
        point = next(self._points, None)
        if point is None:
            return None
        self._taken += 1
        return point, None

    def __getstate__(self):      # Ray Tune pickles its searcher; a generator cannot be pickled
        state = dict(self.__dict__)
        del state["_points"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._points = itertools.islice(self.space.points(), self._taken, None)


class OptunaSampler(Sampler):
    """Optuna's TPE, single-objective (maximize the space's metric) or multi-objective
    (maximize top-1, minimize multiply-adds; Optuna's TPE handles several objectives)."""

    def __init__(self, space: SearchSpace, multi_objective: bool = False):
        # Imported here, not with the module: a search by any other sampler, and every Ray worker
        # that unpickles a trial (it imports this module), would pay Optuna's ~0.1-0.15 s import.
        import optuna

        super().__init__(space)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.multi_objective = multi_objective
        directions = ["maximize", "minimize"] if multi_objective else ["maximize"]
        self.study = optuna.create_study(
            directions=directions, sampler=optuna.samplers.TPESampler(seed=space.settings.seed, constant_liar=True))
        self._distributions = {param.name: optuna.distributions.CategoricalDistribution(param.choices)
                               for param in space.params()}

    def _propose(self):
        trial = self.study.ask()
        point = self.space.sample(lambda param: trial.suggest_categorical(param.name, param.choices))
        return point, trial

    def _values(self, result: Mapping | None) -> Sequence[float] | None:
        if result is None:
            return None
        if self.multi_objective:
            return [float(result["top1"]), float(result["macs"])]
        return [float(result[self.space.objective.metric])]

    def _tell(self, handle, result):
        if handle is None:
            return
        from optuna.trial import TrialState

        values = self._values(result)
        if values is None:
            self.study.tell(handle, state=TrialState.FAIL)
        else:
            self.study.tell(handle, values)

    def _record(self, point, result):
        from optuna.trial import TrialState, create_trial

        values = self._values(result)
        state = TrialState.COMPLETE if values else TrialState.FAIL
        self.study.add_trial(create_trial(
            state=state, values=values, params=dict(point),
            distributions={name: self._distributions[name] for name in point}))


def make_sampler(space: SearchSpace, algorithm: str | None = None) -> Sampler:
    algorithm = algorithm or space.settings.algorithm
    if algorithm == "random":
        return RandomSampler(space)
    if algorithm == "grid":
        return GridSampler(space)
    if algorithm in ("tpe", "multi_objective"):
        return OptunaSampler(space, multi_objective=algorithm == "multi_objective")
    raise ValueError(f"algorithm={algorithm!r}: expected random, grid, tpe or multi_objective")
