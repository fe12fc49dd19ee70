"""Searching a family: each member's scaled space goes to ``search.run_search``, which writes
``<output_dir>/<family>_<member>/``. Members run one after another, or all at once on Ray (each
search then runs inside a Ray task that holds no CPU, so the trials of every member share the cluster).

A one-shot search (``algorithm="oneshot"``) may run on a proxy clip (``family.proxy``): fewer frames
and a lower resolution with the target scaled alike; the found spec is reported at the member's clip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from family.proxy import Proxy, proxy_space
from family.scaling import Family, load_family, scale_space
from search import SearchResult, run_search
from search.oneshot.settings import InputSetting
from search.run import holds_search


def member_names(family: Family, which: "str | Sequence[str]") -> list[str]:
    """``all`` or a member name (or several) -> the members to search, checked."""
    selected = list(family.members) if which == "all" else [which] if isinstance(which, str) else list(which)
    for name in selected:
        family.member(name)
    return selected


def search_members(which: "str | Sequence[str]" = "all", *, family: "Family | str | Path | None" = None,
                   parallel: bool = False, output_dir: "str | Path" = "results", backend: str = "ray",
                   address: str | None = None, num_cpus: int | None = None, proxy: Proxy | None = None,
                   echo: Callable[[str], None] = print, **search_kwargs) -> dict[str, SearchResult]:
    """Runs the search of each selected member in its scaled space; returns {member: result}.

    Args:
      which: 'all', a member name, or a list of them.
      family: a Family or a family file (default specs/family/coefficients.yaml).
      parallel: all members at once on the Ray cluster at ``address`` (or a local Ray).
      proxy: a one-shot search's proxy clip (``family.proxy``); default: the member's own clip.
      **search_kwargs: passed to ``search.run_search`` (resume, num_trials, algorithm, workers,
        retrain, trial_fn, ...).
    """
    family = family if isinstance(family, Family) else load_family(family)
    names = member_names(family, which)
    if proxy is not None and search_kwargs.get("algorithm") != "oneshot":
        raise ValueError("a proxy clip is for one-shot searches: give algorithm oneshot (--algorithm oneshot)")
    members = {name: proxy_space(family, name, proxy) if proxy else (scale_space(family, name), None)
               for name in names}
    kwargs = dict(output_dir=output_dir, backend=backend, **search_kwargs)
    if not parallel or len(names) == 1:
        results = {}
        for name, (space, report_at) in members.items():
            echo(f"family {family.name}: member {name}, target {space.objective.target_macs / 1e9:.2f} GMACs"
                 + (f" on a {proxy.frames}x{proxy.resolution} proxy clip" if proxy else ""))
            results[name] = _run_member(space, report_at, dict(_resumed_if_started(space, kwargs), address=address,
                                                                 num_cpus=num_cpus, echo=echo))
        return results
    if backend != "ray":
        raise ValueError(f"parallel member searches run on Ray; backend={backend!r} runs one search at a time")
    return _search_on_ray(members, address, num_cpus, echo, kwargs)


def _search_on_ray(members, address, num_cpus, echo, kwargs) -> dict[str, SearchResult]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from search.ray_backend import connect, shutdown

    started = connect(address, num_cpus)
    kwargs = {**kwargs, "output_dir": Path(kwargs["output_dir"]).resolve()}
    try:
        # each member's driver runs on this node, so its results folder is on this machine's disk
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        remote = ray.remote(num_cpus=0, scheduling_strategy=here)(_run_member)
        pending = {name: remote.remote(space, report_at, _resumed_if_started(space, kwargs))
                   for name, (space, report_at) in members.items()}
        echo(f"searching {', '.join(pending)} at once on Ray; results go to "
             f"{', '.join(str(Path(kwargs['output_dir']) / space.name) for space, _ in members.values())}")
        return {name: ray.get(ref) for name, ref in pending.items()}
    finally:
        if started:
            shutdown()


def _resumed_if_started(space, kwargs) -> dict:
    """A resumed family search starts the members it had not reached yet."""
    if not kwargs.get("resume"):
        return kwargs
    return {**kwargs, "resume": holds_search(Path(kwargs["output_dir"]) / space.name)}


def _run_member(space, report_at: InputSetting | None, kwargs) -> SearchResult:
    """One member's search (inside a Ray task when parallel: it joins the task's cluster and prints to
    its log); a proxy one-shot search reports its found spec at the member's real input ``report_at``."""
    return run_search(space, report_at=report_at, **kwargs)
