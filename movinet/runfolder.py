"""A training run's folder: its resolved config, history, checkpoints and logs, and the model
restored from it.

    config.yaml          the resolved spec, mode, model options, data and training settings
    checkpoints/         model, optimizer and epoch counter after every finished epoch
    logs/train, logs/val TensorBoard scalars
    history.csv          one row per finished epoch
    model/               the final weights (``movinet.checkpoints.save`` layout)

``movinet.train`` writes it and resumes from it; ``movinet.evaluate`` restores its model.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import keras
import tensorflow as tf
import yaml

from movinet.data import DataConfig
from movinet.model import build_model
from movinet.spec import ModelSpec, spec_from_dict
from movinet.train_config import TrainConfig, TrainError

# Settings that may change between a run and its resumption: they do not change what is learned.
RESUMABLE_CHANGES = ("train.epochs", "train.verbose", "train.max_seconds", "train.log_every_steps",
                     "train.keep_checkpoints", "data.cache_dir", "data.parallel_calls",
                     "data.eval_batch_size")


def resolved_config(spec: ModelSpec, mode: str, model_options: Mapping[str, Any], data: DataConfig,
                    train: TrainConfig) -> dict[str, Any]:
    """What ``config.yaml`` holds: everything that decides what a run learns, resolved."""
    return {"spec": spec.to_dict(), "mode": mode, "model_options": dict(model_options),
            "data": data.to_dict(), "train": train.to_dict()}


def changed_settings(saved: Mapping, current: Mapping, prefix: str = "") -> list[str]:
    """The dotted names of settings that differ between two run configs and would change what is learned."""
    changed = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        before, after = saved.get(key), current.get(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping) and key != "spec":
            changed += changed_settings(before, after, f"{name}.")
        elif before != after and name not in RESUMABLE_CHANGES:
            changed.append(name)
    return changed


def check_resumable(run_dir: Path | None, config: Mapping[str, Any]) -> None:
    """Raises TrainError when ``run_dir`` holds a run whose settings differ from ``config``."""
    if run_dir is None or not (run_dir / "config.yaml").exists():
        return
    changed = changed_settings(read_run_config(run_dir), config)
    if changed:
        raise TrainError(f"{run_dir} holds a run with other settings ({', '.join(changed)}); "
                         "give a new run folder to start another run")


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The resolved config of a run folder."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise TrainError(f"{run_dir}: not a training run folder (no config.yaml)")
    return yaml.safe_load(path.read_text())


def build_run_model(config: Mapping[str, Any], num_classes: int, train: TrainConfig) -> keras.Model:
    """The model a run config describes, with the recipe's regularisation."""
    spec = spec_from_dict(config["spec"], "config.yaml spec")
    options = dict(config.get("model_options") or {})
    options.setdefault("dropout_rate", train.dropout_rate)
    options.setdefault("stochastic_depth_drop_rate", train.stochastic_depth_drop_rate)
    options.setdefault("kernel_l2", train.weight_decay / 2.0)
    return build_model(spec, config["mode"], num_classes=num_classes, **options)


def model_variables(model: keras.Model) -> dict[str, keras.Variable]:
    """The model's variables keyed by their path below the model, as checkpoints hold them.

    Checkpoints name variables by path rather than through TF's object graph, which does not
    follow the Keras 3 layer lists a MovinetClassifier keeps its blocks in.
    """
    return {variable.path.split("/", 1)[-1]: variable for variable in model.weights}


def restore_run_model(run_dir: str | os.PathLike) -> tuple[keras.Model, dict[str, Any]]:
    """The model of a run folder with the weights of its last checkpoint; and the run config."""
    config = read_run_config(run_dir)
    train = TrainConfig.from_dict(config["train"])
    model = build_run_model(config, config["num_classes"], train)
    latest = tf.train.latest_checkpoint(str(Path(run_dir) / "checkpoints"))
    if latest is None:
        raise TrainError(f"{run_dir}: no checkpoint yet (no finished epoch)")
    tf.train.Checkpoint(model=model_variables(model)).restore(latest).expect_partial(
        ).assert_existing_objects_matched()
    return model, config


class RunFolder:
    """Writes the run folder: only the chief writes; other workers save checkpoints to a scratch folder.

    Without a folder (``run_dir`` None) nothing is written and there are no checkpoints.
    """

    def __init__(self, run_dir: Path | None, chief: bool):
        self.root = run_dir
        self.writes = chief and run_dir is not None
        self.scratch = None if chief or run_dir is None else Path(tempfile.mkdtemp(prefix="movinet-worker-"))
        self.checkpoints = None if run_dir is None else (self.root if chief else self.scratch) / "checkpoints"

    def writer(self, name: str):
        if not self.writes:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(str(self.root / "logs" / name))

    def append_history(self, row: Mapping[str, Any]) -> None:
        if not self.writes:
            return
        path = self.root / "history.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def history(self) -> list[dict[str, str]]:
        if self.root is None:
            return []
        path = self.root / "history.csv"
        if not path.exists():
            return []
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    def truncate_history(self, epochs: int) -> None:
        """Drops rows after the restored checkpoint: a partial epoch, or a crash between the writes."""
        rows = self.history()
        kept = [row for row in rows if int(row["epoch"]) <= epochs]
        if not self.writes or len(kept) == len(rows):
            return
        (self.root / "history.csv").unlink()
        for row in kept:
            self.append_history(row)

    def last_result(self) -> dict:
        """The last row of the history as numbers (what a run that is already complete returns)."""
        rows = self.history()
        if not rows:
            return {"epoch": 0, "top1": math.nan, "top5": math.nan, "loss": math.nan}
        return {key: _number(text) for key, text in rows[-1].items()}

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Writes ``config.yaml`` (the chief, with a folder), creating the folder."""
        if self.writes:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _number(text: str):
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        return float(text)
