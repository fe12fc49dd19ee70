"""The default trial: build the candidate in stream mode, time it per frame, train it, score it.

Training is ``train_candidate``: ``movinet.train`` with the search's trial policy, on ``movinet.data``
(the space's ``data`` section is a ``DataConfig`` whose clip fields come from the candidate, its
``budget`` section ``TrainConfig`` fields); this module adapts the search's trial contract
(``search.trial``) to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from search.candidate import MODE, Candidate
from search.space import SearchSpace, SpaceError
from search.trial import TRIAL_PROCESS, Report, hold_threads, stream_latency_ms

if TYPE_CHECKING:
    from movinet.data.config import DataConfig
    from movinet.spec import ModelSpec
    from movinet.train_config import TrainConfig

# Batch-norm momentum of trials (official: 0.99), whose few hundred steps the moving averages must follow.
TRIAL_NORM_MOMENTUM = 0.9
# DataConfig fields a candidate sets: its clip is part of what is searched.
CLIP_FIELDS = ("frames", "resolution", "stride")
REPORTED = ("epoch", "top1", "top5", "loss", "train_loss", "train_top1", "device")


def data_config(space: SearchSpace, candidate: Candidate):
    from movinet.data.config import DataConfig

    return DataConfig(**{**space.data, "frames": candidate.frames, "resolution": candidate.resolution,
                         "stride": candidate.frame_stride})


# What Keras 3 imports as it loads, if installed, for features a trial never uses (notebook
# detection, an image gallery plot): ~1.4 s of a fresh process's ~9 s import of TensorFlow and
# Keras on a 2-core host, paid by every trial process of a search.
UNUSED_IN_TRIALS = ("IPython", "matplotlib")


@contextlib.contextmanager
def _unused_modules_kept_out():
    """In a process that only runs trials (``TRIAL_PROCESS`` set, as in Ray's workers of a search),
    Keras loads without ``UNUSED_IN_TRIALS``; the process can still import them afterwards. Any
    other process (a notebook, the Keras Tuner backend's driver) imports as it would."""
    blocked = []
    if os.environ.get(TRIAL_PROCESS) == "1" and "keras" not in sys.modules:
        blocked = [name for name in UNUSED_IN_TRIALS if name not in sys.modules]
    sys.modules.update(dict.fromkeys(blocked))   # None there: `import name` raises ImportError
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def _freeze_imports() -> None:
    """In a process that only runs trials, the first time: the objects alive once TensorFlow, Keras
    and Ray are loaded (~390k, as long-lived as the process) leave the cyclic garbage collector's
    scans (``gc.freeze``). Keras's ``clear_session`` before each trial runs a full collection, which
    scanned them all: 0.15-0.35 s of every trial on a 2-core host, ~0.05 s once they are frozen."""
    if os.environ.get(TRIAL_PROCESS) == "1" and gc.get_freeze_count() == 0:
        gc.freeze()


def train_and_score(candidate: Candidate, space: SearchSpace, report: Report) -> dict:
    """The trial contract with the real trainer (see ``search.trial``).

    Besides the metrics, every report says where the trial's time went: ``import_seconds``
    (importing TensorFlow, Keras and the model code, which the first trial of a process pays,
    and clearing the previous trial's Keras state),
    ``probe_seconds`` (timing the stream model per frame: tracing its one-frame step, then the
    frames; the model is the one about to be trained, so it is built once) and ``fit_seconds``
    (the trainer's own time of its epochs: training steps, data loading included, then the
    validation pass; the first step traces the training function, so tracing counts here).
    """
    began = time.monotonic()
    with _unused_modules_kept_out():
        hold_threads(space.settings.cpus)
        import keras

        import movinet.train  # noqa: F401  (here: its import counts in import_seconds)

    _freeze_imports()
    keras.backend.clear_session()   # Ray reuses a trial's process for the next trial
    timing = {"import_seconds": time.monotonic() - began, "probe_seconds": 0.0, "fit_seconds": 0.0}
    latency = {}

    def probe(model) -> None:
        probing = time.monotonic()
        latency["latency_ms"] = stream_latency_ms(model, candidate.resolution)
        timing["probe_seconds"] = time.monotonic() - probing

    def on_epoch(metrics: Mapping) -> None:
        timing["fit_seconds"] += metrics["seconds"]
        report({**{k: metrics[k] for k in REPORTED if k in metrics}, **latency, **timing})

    result = train_candidate(candidate.spec, MODE, data_config(space, candidate), space.budget,
                             model_options=candidate.options, report=on_epoch, on_model_built=probe)
    return {**{k: result[k] for k in REPORTED if k in result}, **latency, **timing}


def train_candidate(spec: ModelSpec | str, mode: str = "stream", data_config: DataConfig | None = None,
                    budget: Mapping[str, Any] | None = None, *, train_config: TrainConfig | None = None,
                    model_options: Mapping[str, Any] | None = None, run_dir: str | os.PathLike | None = None,
                    report: Callable[[dict], None] | None = None,
                    on_model_built: Callable[[Any], None] | None = None) -> dict:
    """Trains one search candidate within a budget, with the same code as ``movinet.train.train``.

    A trial is a few hundred steps, too few for batch-norm moving averages of the official
    momentum 0.99 to forget their initial values (the validation accuracy then stays near chance
    while the training accuracy rises), so trials use ``TRIAL_NORM_MOMENTUM`` unless
    ``model_options`` sets ``norm_momentum``.

    Args:
      budget: TrainConfig fields that bound the trial, e.g. ``{"epochs": 2, "max_seconds": 120}``.
      run_dir: where to keep the run (see ``movinet.train.train``); by default nothing is written,
        which spares a trial the checkpoints, logs and model save of every epoch that nobody reads.
      report: called after every epoch with its metrics (``epoch``, ``top1``, ``top5``, ``loss``).
      on_model_built: called with the built model before training (see ``movinet.train.train``).
    Returns:
      {top1, top5, loss, epoch, steps, seconds, params, stopped_by_budget, ...} of the last evaluation.
    """
    from movinet.data.config import DataConfig
    from movinet.train import train
    from movinet.train_config import TrainConfig

    settings = (train_config or TrainConfig(verbose=0)).to_dict()
    settings.update(budget or {})
    config = TrainConfig.from_dict(settings)
    data_config = data_config or DataConfig()
    options = {"norm_momentum": TRIAL_NORM_MOMENTUM, **dict(model_options or {})}
    return train(spec, mode, data_config, config, run_dir, model_options=options, on_epoch_end=report,
                 on_model_built=on_model_built)


def check_training_sections(space: SearchSpace) -> SearchSpace:
    """Checks ``data`` and ``budget`` against the trainer's settings and fills in the number of
    classes (the classifier's width, which the cost filter counts) from the data itself. The data's
    source and paths are checked even where the space gives the number of classes, for every
    trial would otherwise start only to fail on them.

    Runs in the search driver, which trains nothing: the settings are checked without TensorFlow,
    which only a data source that must be read to count its classes (not synthetic) imports.
    """
    from movinet.data.config import DataConfig, check_paths_exist, synthetic_classes
    from movinet.data.errors import DataError
    from movinet.train_config import TrainConfig, TrainError

    fields = {f.name for f in dataclasses.fields(DataConfig)}
    for key in space.data:
        if key in CLIP_FIELDS:
            raise SpaceError(f"{space.source}: data.{key}: the clip is searched: set it under space.input")
        if key not in fields:
            raise SpaceError(f"{space.source}: data.{key}: unknown; expected DataConfig fields "
                             f"{sorted(fields - set(CLIP_FIELDS))}")
    try:
        TrainConfig.from_dict(dict(space.budget))
    except (TrainError, TypeError) as err:
        raise SpaceError(f"{space.source}: budget: {err}") from None
    clip = {"frames": space.frames[0], "resolution": space.resolution[0], "stride": space.frame_stride[0]}
    try:
        config = DataConfig(**{**space.data, **clip})
        check_paths_exist(config)
        if space.num_classes is not None:
            return space
        if config.source == "synthetic":
            num_classes = synthetic_classes(config)
        else:
            from movinet.data.pipeline import make_datasets

            num_classes = make_datasets(config)[2].num_classes
    except (DataError, TypeError) as err:
        raise SpaceError(f"{space.source}: data: {err}") from None
    return dataclasses.replace(space, data={**space.data, "num_classes": num_classes})
