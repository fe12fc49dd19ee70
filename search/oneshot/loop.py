"""One supernet and its controller trained together (TuNAS, Bender et al. 2020), in one process or
data-parallel under a tf.distribute strategy.

    each step, on each replica, one ``tf.function`` around ``strategy.run``:
      sample an architecture (seed, step, replica) -> (a) one step of the shared weights on a train
      batch -> (b) the same architecture on a validation batch ``validation_batch_multiple`` times
      larger -> reward = top1 + beta * |macs / target - 1| (macs exact, in the graph)
      -> (c) REINFORCE: -(reward - baseline) * log pi / replicas, baseline an EMA of the mean reward

``Model.fit`` is not used: Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy, and Keras 3
optimizers sum gradients over replicas, which the loss scaling here accounts for. Batches are a
function of (seed, step, replica), so a run resumed from a checkpoint sees the same data and draws
the same architectures as one that never stopped.

Run folder: ``steps.csv`` (a row per step), ``probabilities.csv`` (a row per log step), written by
the chief only; ``checkpoints/`` (each non-chief worker writes its own under ``scratch/``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from movinet.data import DataConfig, make_datasets
from movinet.metrics import batch_counts
from movinet.options import ModelOptions, resolve_options
from movinet.train import clip_over_replicas, is_chief, make_optimizer, optimizer_variables
from search.candidate import candidate_macs, decode
from search.oneshot.controller import Controller, Sample
from search.oneshot.costs import SE_PARAM, base_point, cost_terms, graph_macs
from search.oneshot.settings import InputSetting, OneShotSettings, oneshot_settings
from search.oneshot.supernet import Supernet
from search.space import SearchSpace, SpaceError
from search.training import check_training_sections

STEP_FIELDS = ("step", "reward", "baseline", "macs", "macs_min", "macs_max", "entropy", "supernet_top1",
               "train_loss", "controller_lr", "seconds")


class ControllerSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """0 for the RL delay, then ``rate * growth ** (step / steps)`` (TuNAS: 10x over the run)."""

    def __init__(self, rate: float, growth: float, delay_steps: int, steps: int):
        self.rate, self.growth, self.delay_steps, self.steps = rate, growth, delay_steps, steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rate = self.rate * tf.pow(self.growth, step / self.steps)
        return tf.where(step < self.delay_steps, 0.0, rate)

    def get_config(self):
        return {"rate": self.rate, "growth": self.growth, "delay_steps": self.delay_steps, "steps": self.steps}


@dataclasses.dataclass
class Clips:
    """A split held in memory: float32 clips [N, T, H, W, 3] and int32 labels [N]."""

    videos: tf.Tensor
    labels: tf.Tensor

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, seed: int, stream: int, step, replica, size: int, replicas):
        """The ``size`` clips of ``replica`` at ``step``: consecutive positions of a stream of
        epochs, each a permutation drawn from (seed, stream, epoch)."""
        n = self.size
        start = (tf.cast(step, tf.int64) * tf.cast(replicas, tf.int64) + tf.cast(replica, tf.int64)) * size
        positions = start + tf.range(size, dtype=tf.int64)
        first = start // n

        def permutation(epoch):
            key = tf.random.experimental.stateless_fold_in(tf.constant([seed, stream], tf.int64), epoch)
            return tf.argsort(tf.random.stateless_uniform([n], seed=key))

        offsets = positions % n
        index = tf.where(positions // n == first, tf.gather(permutation(first), offsets),
                         tf.gather(permutation(first + 1), offsets))
        return tf.gather(self.videos, index), tf.gather(self.labels, index)


def load_clips(config: DataConfig) -> tuple[Clips, Clips, int]:
    """The training and validation splits, unaugmented, in memory; and the number of classes.

    Each split is put in an order of its own content: the pipeline's shuffle depends on TF's global
    seed, and batches must be the same in every worker and in a resumed process.
    """
    train, val, info = make_datasets(dataclasses.replace(config, augment=False))

    def gather(dataset) -> Clips:
        videos, labels = zip(*((v.numpy(), l.numpy()) for v, l in dataset))
        videos, labels = np.concatenate(videos), np.concatenate(labels)
        order = np.argsort([hashlib.sha1(clip.tobytes()).hexdigest() for clip in videos])
        return Clips(tf.constant(videos[order]), tf.constant(labels[order]))

    return gather(train), gather(val), info.num_classes


def options_by_se(space: SearchSpace, setting: InputSetting) -> dict[str, ModelOptions]:
    """The stand-alone build options of each SE type the space allows, as its candidates get them."""
    point = base_point(space, setting)
    choices = space.options.get("se_type") or (None,)
    out = {}
    for se_type in choices:
        values = dict(point, **({SE_PARAM: se_type} if se_type is not None else {}))
        candidate = decode(space, values)
        options = resolve_options(candidate.spec, "stream", num_classes=space.num_classes, **candidate.options)
        out[options.se_type] = options
    return out


class OneShotRun:
    """The supernet, controller, optimizers, checkpoint and distributed step of one search."""

    def __init__(self, space: SearchSpace, setting: InputSetting, settings: OneShotSettings,
                 strategy: tf.distribute.Strategy, train: Clips, val: Clips, seed: int):
        self.space, self.setting, self.settings, self.strategy = space, setting, settings, strategy
        self.train, self.val, self.seed = train, val, seed
        replicas = strategy.num_replicas_in_sync
        self.batch_size = int(space.data.get("batch_size", DataConfig.batch_size))
        self.global_batch = self.batch_size * replicas
        self.steps = settings.total_steps(train.size, self.global_batch, int(space.budget["epochs"]))
        self.delay_steps = int(settings.rl_delay * self.steps)
        recipe = settings.weights_recipe(space.budget)
        self.label_smoothing = recipe.label_smoothing
        self.clipnorm = recipe.clipnorm
        self.num_classes = int(space.num_classes)
        self.terms = cost_terms(space, setting)
        self.target = space.objective.target_macs
        self.beta = space.objective.beta
        with strategy.scope():
            self.supernet = Supernet(space, options_by_se(space, setting), seed=seed, name="supernet")
            self.controller = Controller(space, name="controller")
            self.weights_optimizer = make_optimizer(dataclasses.replace(recipe, precision="float32"), self.steps)
            self.controller_optimizer = keras.optimizers.Adam(
                ControllerSchedule(settings.controller_rate(self.global_batch), settings.controller_lr_growth,
                                   self.delay_steps, self.steps),
                beta_1=0.0, beta_2=0.999, epsilon=1e-8)
            self.weights_optimizer.build(self.supernet.trainable_variables)
            self.controller_optimizer.build(self.controller.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.baseline_ema = tf.Variable(0.0, trainable=False, name="baseline_ema")
        # The stand-alone models' L2 (weight_decay / 2 on every conv kernel but the classifier's),
        # on every branch's kernels at each step, sampled or not, as TuNAS decays all shared weights.
        self.kernel_l2 = recipe.weight_decay / 2.0
        self.decayed = [w for w in self.supernet.trainable_variables
                        if w.path.endswith("kernel") and not w.path.endswith("classifier_kernel")]
        self.checkpoint = tf.train.Checkpoint(
            supernet=_by_path(self.supernet.weights), controller=_by_path(self.controller.weights),
            weights_optimizer=optimizer_variables(self.weights_optimizer),
            controller_optimizer=optimizer_variables(self.controller_optimizer),
            step=self.step, baseline_ema=self.baseline_ema)
        self._step_fn = tf.function(self._distributed_step, autograph=False)

    def warmup_probability(self, fraction: float, step):
        """TuNAS's linear decay from 1 at step 0 to 0 at ``fraction`` of the steps."""
        length = fraction * self.steps
        if length <= 0:
            return tf.constant(0.0)
        return tf.maximum(0.0, 1.0 - tf.cast(step, tf.float32) / length)

    def sample(self, step, replica) -> Sample:
        return self.controller.sample(self.seed, step, replica,
                                      self.warmup_probability(self.settings.op_warmup, step),
                                      self.warmup_probability(self.settings.filter_warmup, step))

    def reward(self, top1, macs):
        """The space's objective (``Objective.reward``), on tensors."""
        ratio = tf.cast(macs, tf.float64) / self.target
        return tf.cast(top1, tf.float32) + tf.cast(self.beta * tf.abs(ratio - 1.0), tf.float32)

    def _replica_step(self, step):
        context = tf.distribute.get_replica_context()
        replica, replicas = context.replica_id_in_sync_group, context.num_replicas_in_sync
        mean = tf.distribute.ReduceOp.MEAN
        sample = self.sample(step, replica)
        loss = self.train_weights(sample, self.train.batch(self.seed, 0, step, replica, self.batch_size, replicas))
        size = self.batch_size * self.settings.validation_batch_multiple
        clips, labels = self.val.batch(self.seed, 1, step, replica, size, replicas)
        # The same architecture on a held-out batch, after the weights' step (TuNAS's order).
        top1 = batch_counts(labels, self.supernet(clips, sample=sample), self.num_classes)["top1"] / size
        macs = graph_macs(self.terms, sample.index, sample.active)
        reward = self.reward(top1, macs)
        mean_reward = context.all_reduce(mean, reward)
        momentum = self.settings.baseline_momentum
        ema = momentum * self.baseline_ema + (1 - momentum) * mean_reward
        # Zero-debiased, as TuNAS's moving average: the first steps' baseline is not pulled to 0.
        baseline = ema / (1.0 - tf.pow(momentum, tf.cast(step + 1, tf.float32)))
        self._train_controller(sample, reward - baseline, replicas)
        return {"reward": mean_reward, "baseline": baseline, "ema": ema, "macs": context.all_gather(macs[None], 0),
                "supernet_top1": context.all_reduce(mean, top1),
                "train_loss": context.all_reduce(tf.distribute.ReduceOp.SUM, loss)}

    def train_weights(self, sample: Sample, batch):
        """One optimizer step of the shared weights on the sampled architecture, with the
        stand-alone recipe's L2 and per-variable clipping; returns this replica's share of the
        global batch's mean cross-entropy (Keras 3 optimizers sum over replicas), the L2 left out
        as the stand-alone trainings report it."""
        clips, labels = batch
        weights = self.supernet.trainable_variables
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits = self.supernet(clips, sample=sample)
            loss = batch_counts(labels, logits, self.num_classes, self.label_smoothing)["loss"] / self.global_batch
            total = loss
            if self.kernel_l2:
                penalty = self.kernel_l2 * tf.add_n([tf.reduce_sum(tf.square(w)) for w in self.decayed])
                total += penalty / replicas
        gradients = tape.gradient(total, weights)
        if self.clipnorm:
            gradients = clip_over_replicas(gradients, self.clipnorm)
        self.weights_optimizer.apply_gradients(zip(gradients, weights))
        return loss

    def _train_controller(self, sample: Sample, advantage, replicas: int):
        """REINFORCE: -advantage * log pi(sample), divided by the replicas so that the optimizer's
        sum over replicas is TuNAS's cross-replica mean."""
        logits = self.controller.trainable_variables
        with tf.GradientTape() as tape:
            log_prob = self.controller.log_prob(sample.index, sample.active)
            loss = -tf.stop_gradient(advantage) * log_prob / replicas
        self.controller_optimizer.apply_gradients(zip(tape.gradient(loss, logits), logits))

    def _distributed_step(self, step):
        out = self.strategy.run(self._replica_step, args=(step,))
        out = {k: self.strategy.experimental_local_results(v)[0] for k, v in out.items()}
        self.baseline_ema.assign(out.pop("ema"))
        self.step.assign(step + 1)
        out["entropy"] = self.controller.entropy()
        out["controller_lr"] = self.controller_optimizer.learning_rate
        return out

    def run_step(self) -> dict[str, Any]:
        step = int(self.step.numpy())
        began = time.perf_counter()
        out = {k: v.numpy() for k, v in self._step_fn(tf.constant(step, tf.int64)).items()}
        macs = out.pop("macs")
        return {"step": step + 1, "reward": float(out["reward"]), "baseline": float(out["baseline"]),
                "macs": float(np.mean(macs)), "macs_min": int(macs.min()), "macs_max": int(macs.max()),
                "entropy": float(out["entropy"]), "supernet_top1": float(out["supernet_top1"]),
                "train_loss": float(out["train_loss"]), "controller_lr": float(out["controller_lr"]),
                "seconds": time.perf_counter() - began, "sampled_macs": macs.tolist()}

    def point_index(self, point: Mapping[str, Any]) -> dict[str, tf.Tensor]:
        """The choice indices of a point of the space (parameters it leaves out: 0)."""
        return {p.name: tf.constant(p.choices.index(point[p.name]) if p.name in point else 0, tf.int32)
                for p in self.controller.params}

    @tf.function
    def _point_hits(self, clips, labels, index):
        sample = self.controller.fixed(index)
        logits = self.supernet(clips, sample=sample)
        return batch_counts(labels, logits, logits.shape[-1])["top1"]

    def supernet_top1(self, point: Mapping[str, Any]) -> float:
        """Top-1 of the architecture ``point`` with the shared weights over the validation split,
        in reward-sized batches (batch statistics, as during the search)."""
        size = self.batch_size * self.settings.validation_batch_multiple
        index = self.point_index(point)
        starts = range(0, self.val.size - size + 1, size)
        hits = sum(float(self._point_hits(self.val.videos[s:s + size], self.val.labels[s:s + size], index))
                   for s in starts)
        return hits / (len(starts) * size)


def _by_path(variables) -> dict[str, tf.Variable]:
    """Variables keyed by their Keras path: checkpoints find them by name, not object graph."""
    named = {v.path: v for v in variables}
    if len(named) != len(variables):
        raise ValueError("variables with equal paths cannot be checkpointed by path")
    return named


class _Log:
    """steps.csv and probabilities.csv of the chief; rows past a resumed checkpoint are dropped."""

    def __init__(self, folder: Path, chief: bool, decisions: Mapping[str, tuple], resumed_step: int):
        self.chief = chief
        self.steps_path, self.probabilities_path = folder / "steps.csv", folder / "probabilities.csv"
        self.columns = ["step"] + [f"{name}={choice}" for name, choices in decisions.items() for choice in choices]
        self.rows: list[dict] = []
        if chief:
            self._truncate(self.steps_path, STEP_FIELDS, resumed_step)
            self._truncate(self.probabilities_path, self.columns, resumed_step)

    @staticmethod
    def _truncate(path: Path, fields, step: int) -> None:
        rows = []
        if path.exists() and step > 0:
            with path.open() as f:
                rows = [row for row in csv.DictReader(f) if int(row["step"]) <= step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def add(self, row: dict) -> None:
        if self.chief:
            self.rows.append(row)

    def flush(self, step: int, probabilities: Mapping[str, list[float]]) -> None:
        if not self.chief:
            return
        with self.steps_path.open("a", newline="") as f:
            csv.DictWriter(f, STEP_FIELDS, extrasaction="ignore").writerows(self.rows)
        self.rows = []
        values = [step] + [p for name in probabilities for p in probabilities[name]]
        with self.probabilities_path.open("a", newline="") as f:
            csv.writer(f).writerow(values)


def _checkpoint_folder(folder: Path, strategy: tf.distribute.Strategy, chief: bool) -> Path:
    if chief:
        return folder / "checkpoints"
    task = getattr(getattr(strategy, "cluster_resolver", None), "task_id", 0)
    return folder / "scratch" / f"worker{task}" / "checkpoints"


def train_supernet(space: SearchSpace, setting: InputSetting, *, folder: Path, seed: int = 0,
                   strategy: tf.distribute.Strategy | None = None, resume: bool = False,
                   on_progress: Callable[[dict], None] | None = None) -> dict:
    """Trains one supernet and its controller at ``setting``; returns the found architecture.

    Returns {"spec": ModelSpec dict, "point": the point of the space, "macs": int, "target_macs",
    "steps", "reward" (mean of the last log window), "entropy", "supernet_top1" (the found
    architecture with the shared weights, on the validation split), "decisions": {name: probabilities}}.
    Under MultiWorkerMirroredStrategy every worker calls it; only the chief writes the CSVs and
    calls ``on_progress`` (every ``log_every`` steps, after any checkpoint of that step).
    ``resume`` continues from the last checkpoint of ``folder``.
    """
    os.environ.pop("TF_USE_LEGACY_KERAS", None)   # Ray Train sets it; this code is Keras 3
    space = check_training_sections(space)
    settings = oneshot_settings(space)
    strategy = strategy or tf.distribute.get_strategy()
    folder = Path(folder)
    chief = is_chief(strategy)
    folder.mkdir(parents=True, exist_ok=True)
    config = DataConfig(**{**space.data, "frames": setting.frames, "resolution": setting.resolution,
                           "stride": setting.frame_stride})
    train, val, num_classes = load_clips(config)
    _check_batches(space, settings, train, val, strategy.num_replicas_in_sync)
    space = dataclasses.replace(space, data={**space.data, "num_classes": num_classes})
    run = OneShotRun(space, setting, settings, strategy, train, val, seed)
    manager = tf.train.CheckpointManager(run.checkpoint, _checkpoint_folder(folder, strategy, chief), max_to_keep=2)
    if resume:
        latest = tf.train.latest_checkpoint(folder / "checkpoints")
        if latest:
            run.checkpoint.restore(latest).assert_consumed()
    log = _Log(folder, chief, {d.name: d.choices for d in run.controller.decisions}, int(run.step.numpy()))
    window: list[dict] = []
    while int(run.step.numpy()) < run.steps:
        row = run.run_step()
        step = row["step"]
        log.add(row)
        window.append(row)
        if step % settings.checkpoint_every == 0 or step == run.steps:
            manager.save(checkpoint_number=step)
        if step % settings.log_every == 0 or step == run.steps:
            probabilities = run.controller.probabilities()
            log.flush(step, probabilities)
            if chief and on_progress is not None:
                on_progress({**_window_means(window), "step": step, "steps": run.steps,
                             "sampled_macs": row["sampled_macs"], "probabilities": probabilities})
            window = [] if step < run.steps else window
    return _result(run, window)


def _window_means(rows: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in STEP_FIELDS if k != "step" and rows}


def _check_batches(space: SearchSpace, settings: OneShotSettings, train: Clips, val: Clips,
                   replicas: int) -> None:
    batch = int(space.data.get("batch_size", DataConfig.batch_size))
    if batch * replicas > train.size:
        raise SpaceError(f"{space.source}: data.batch_size: {batch} clips x {replicas} replicas is more "
                         f"than the {train.size} training clips")
    if batch * settings.validation_batch_multiple > val.size:
        raise SpaceError(f"{space.source}: oneshot.validation_batch_multiple: a reward batch of "
                         f"{batch} x {settings.validation_batch_multiple} clips is more than the "
                         f"{val.size} validation clips")


def _result(run: OneShotRun, window: list[dict]) -> dict:
    point = run.controller.argmax_point(run.setting)
    candidate = decode(run.space, point)
    means = _window_means(window)
    return {"spec": candidate.spec.to_dict(), "point": point, "macs": candidate_macs(run.space, candidate),
            "target_macs": run.target, "steps": run.steps, "reward": means.get("reward", float("nan")),
            "entropy": float(run.controller.entropy().numpy()),
            "supernet_top1": run.supernet_top1(point),
            "decisions": run.controller.probabilities()}
