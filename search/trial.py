"""The trial contract: what one trial does with one candidate, whichever backend runs it.

A trial function is ``trial_fn(candidate, space, report) -> metrics``. It builds the candidate
in stream mode, trains it on ``space.data`` within ``space.budget``, calls ``report(metrics)``
after every epoch (schedulers such as ASHA stop trials on these) and returns the final metrics:
``top1`` (required), ``top5``, ``loss``, ``latency_ms``, ``epoch``, and optionally the devices it
trained on (``device``, as ``movinet.devices.describe`` names them) and where its time went
(``fit_seconds``, ``import_seconds``, ``probe_seconds``; see ``search.training``). ``run_trial``
completes each report with the candidate's multiply-adds, parameters and TuNAS reward, so every
trial function is scored the same way, and with when the trial began (``started_at``, Unix time)
and its wall time so far (``seconds``).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Mapping

from search.candidate import Candidate
from search.space import SearchSpace

# Set (to "1") in the environment of processes that only run trials, such as the Ray workers of a
# search (``search.ray_backend.runtime_env``); ``search.training`` then imports less.
TRIAL_PROCESS = "MOVINET_TRIAL_PROCESS"

Report = Callable[[dict], None]
TrialFn = Callable[[Candidate, SearchSpace, Report], Mapping]


def run_trial(trial_fn: TrialFn, candidate: Candidate, space: SearchSpace, report: Report) -> dict:
    """Runs ``trial_fn`` on ``candidate``; every report and the result carry cost and reward."""
    started_at = time.time()
    started = time.monotonic()
    cost = candidate.cost(space.num_classes)
    reported: list[Mapping] = []

    def complete(metrics: Mapping) -> dict:
        if "top1" not in metrics:
            raise ValueError(f"the trial function reported {sorted(metrics)}: top1 is required")
        row = {**metrics, "macs": cost.macs, "params": cost.params}
        row["reward"] = space.objective.reward(float(row["top1"]), row["macs"])
        row["started_at"] = started_at
        row["seconds"] = time.monotonic() - started
        return row

    def forward(metrics: Mapping) -> None:
        reported.append(dict(metrics))
        report(complete(metrics))

    metrics = dict(trial_fn(candidate, space, forward))
    final = complete(metrics)
    if not reported or reported[-1] != metrics:
        report(final)
    return final


def hold_threads(cpus: float) -> None:
    """Holds TensorFlow to the trial's CPUs; call before TensorFlow runs anything in the process."""
    from movinet.threads import set_threads

    try:
        set_threads(max(1, int(cpus)))
    except RuntimeError:   # the runtime already started in this process (Ray reuses it); keep its pools
        pass


def keep_off_gpus() -> None:
    """Hides every GPU from this process; call before TensorFlow initializes its devices.

    For trials that ask for no GPU: Ray (2.60) sets ``CUDA_VISIBLE_DEVICES`` only for those that
    ask for some, so the others would see, and take memory on, every GPU of their node. The CUDA
    runtime reads the variable once, when TensorFlow first looks for GPUs.
    """
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


def stream_latency_ms(model, resolution: int, frames: int = 16, warmup: int = 3) -> float:
    """Median wall time (ms) of one frame through the stream model, states carried, batch 1
    (``movinet.runners.seconds_per_frame`` over random frames)."""
    import numpy as np

    from movinet.runners import seconds_per_frame

    clip = np.random.default_rng(0).random((frames, resolution, resolution, 3), dtype=np.float32)
    return 1e3 * seconds_per_frame(model, clip, warmup=warmup)


def trial_location() -> dict:
    """Where a trial runs: Ray node id when under Ray, host and process id always."""
    location = {"hostname": os.uname().nodename, "pid": os.getpid(), "node_id": None}
    try:
        import ray

        if ray.is_initialized():
            location["node_id"] = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return location
