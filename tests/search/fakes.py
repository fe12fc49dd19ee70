"""Stand-in trial functions: the trial contract without training, fast and deterministic.

They read their knobs from the space's ``data`` section, which the search passes through:
``epoch_seconds`` (sleep per epoch), ``crash_resolution`` (raise for candidates of that input
size, after its last report), ``crash_at_start`` (raise before the first report for candidates of
that input size), ``marker_dir`` (append 'start'/'end' lines per trial, to count executions; a start file
holds the trial process's TF_ENABLE_ONEDNN_OPTS, to see what reached it from the driver).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path


def quick_trial(candidate, space, report):
    marker = space.data.get("marker_dir")
    _mark(marker, "start", candidate.key)
    if candidate.resolution == space.data.get("crash_at_start"):
        raise RuntimeError(f"injected crash at the start of {candidate.key}")
    quality = 0.3 + 0.6 * random.Random(candidate.key).random()
    epochs = space.budget["epochs"]
    metrics = {}
    for epoch in range(1, epochs + 1):
        time.sleep(space.data.get("epoch_seconds", 0.0))
        metrics = {"epoch": epoch, "top1": quality * epoch / epochs, "top5": 1.0, "loss": 1.0 - quality,
                   "latency_ms": 0.5}
        report(metrics)
    if candidate.resolution == space.data.get("crash_resolution"):
        raise RuntimeError(f"injected crash in {candidate.key}")
    _mark(marker, "end", candidate.key)
    return metrics


def _mark(folder, event: str, key: str) -> None:
    if folder:
        with open(Path(folder) / f"{event}-{key}-{os.getpid()}-{time.monotonic_ns()}", "w") as f:
            if event == "start":
                f.write(os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"))


GPU_SETTINGS = ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH")


def gpu_settings_trial(candidate, space, report):
    """``quick_trial`` that first writes what its process was given for the GPUs (``GPU_SETTINGS``,
    None where unset) to a JSON file in ``marker_dir``."""
    seen = {name: os.environ.get(name) for name in GPU_SETTINGS}
    path = Path(space.data["marker_dir"]) / f"gpus-{candidate.key}-{os.getpid()}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(seen))
    return quick_trial(candidate, space, report)
