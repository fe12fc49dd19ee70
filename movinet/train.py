"""Training: one custom loop for every tf.distribute strategy, into resumable run folders.

The loop is written out (``strategy.run``) rather than ``Model.fit``, because Keras 3 ``fit``
fails under MultiWorkerMirroredStrategy (keras-team/keras#20585). Each replica divides its summed
loss by the global batch size and its share of the regularisation by the number of replicas: the
Keras 3 optimizer sums gradients across replicas, so the update equals that of one device on the
whole batch.

The recipe follows the official Kinetics training configs (MoViNets, arXiv 2103.11511): RMSprop
(rho 0.9, momentum 0.9, epsilon 1.0), cosine decay after a linear warm-up, label smoothing 0.1,
L2 weight decay 3e-5 (an L2 of half that on conv kernels), clipnorm 1.0, dropout and stochastic
depth 0.2. The learning rate is for the global batch; the official 1.8 is for 1024 clips over
85785 steps, while the default 0.1 suits the batches of 8-16 and the few thousand steps of CPU
runs (it reaches 90% on the synthetic set in 6 epochs of 64 steps, where the linearly scaled
0.014 stays near chance).

A run writes its folder (``movinet.runfolder``: config, checkpoints, logs, history, final model);
running the same command again resumes after the last finished epoch. Without a folder nothing
is written (a search trial: nobody would read it).

The settings (``TrainConfig``) live in ``movinet.train_config``, which needs no TensorFlow. Its
precision ``"auto"`` becomes a policy once the strategy's devices are known (``movinet.devices``:
mixed float16 on GPUs, float32 on CPUs); config.yaml records the policy the run used.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from movinet import native
from movinet.allocator import keep_freed_memory
from movinet.data import DataConfig, DataInfo, make_datasets
from movinet.devices import describe, resolve_precision, strategy_devices
from movinet.metrics import batch_counts, summarize_counts
from movinet.optimizers import FusedAdam, FusedAdamW, FusedRMSprop, FusedSGD
from movinet.runfolder import RunFolder, build_run_model, check_resumable, model_variables, resolved_config
from movinet.spec import ModelSpec, load_spec
from movinet.train_config import STRATEGIES, TrainConfig, TrainError

EpochHook = Callable[[dict], None]
ModelHook = Callable[[keras.Model], None]


def make_strategy(name: str, tpu_address: str | None = None) -> tf.distribute.Strategy:
    """A tf.distribute strategy by name; 'mirrored' spans all GPUs, else all logical CPUs."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if gpus:
            return tf.distribute.MirroredStrategy(gpus)
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise TrainError(f"strategy={name!r}: expected one of {list(STRATEGIES)}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this worker writes the run folder (every worker of a single-host strategy does)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def learning_rate_schedule(config: TrainConfig, total_steps: int):
    """Linear warm-up from 0 over ``warmup_fraction`` of the steps, then a cosine to the final rate."""
    warmup = int(total_steps * config.warmup_fraction)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(total_steps - warmup, 1), alpha=config.final_learning_rate_fraction,
        warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup)


def make_optimizer(config: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """The optimizer with a cosine learning rate after a linear warm-up from 0.

    The optimizers are Keras's own with each variable's update as one fused TF op
    (``movinet.optimizers``). Gradient clipping is not left to the optimizer: Keras clips each
    replica's gradient before summing across replicas, which is not the clipping of the whole
    batch (see ``Trainer``).
    """
    schedule = learning_rate_schedule(config, total_steps)
    if config.optimizer == "rmsprop":
        optimizer = FusedRMSprop(schedule, rho=config.rmsprop_rho, momentum=config.momentum,
                                 epsilon=config.rmsprop_epsilon)
    elif config.optimizer == "sgd":
        optimizer = FusedSGD(schedule, momentum=config.momentum, nesterov=True)
    elif config.optimizer == "adam":
        optimizer = FusedAdam(schedule)
    else:
        optimizer = FusedAdamW(schedule)
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def clip_each_by_norm(tensors, limit, factor=1.0):
    """``[tf.clip_by_norm(t, limit) * factor for t in tensors]`` in 5 ops per tensor.

    ``tf.clip_by_norm`` adds ~10 ops per tensor: over an A0's 265 gradients, 2.6k ops of its
    training step (~2.5 s of its tracing on 2 cores) and as many small kernels at every step. Here
    each tensor takes one ``L2Loss`` (half its squared norm, l) and its scale
    factor * min(limit / sqrt(2 l), 1) = c * min(rsqrt(l), sqrt(2) / limit) with c = factor *
    limit / sqrt(2), which is ``factor`` for a zero tensor. Each tensor is clipped on its own, so
    its optimizer update need not wait for the other gradients (stacking all the norms in one
    vector did make it wait: the A0 step ran ~5% slower).
    """
    tensors = list(tensors)
    if not tensors:
        return []
    limit = tf.cast(limit, tf.float32)
    coefficient = factor * limit * (0.5 ** 0.5)
    bound = (2.0 ** 0.5) / limit
    clipped = []
    for t in tensors:
        scale = coefficient * tf.minimum(tf.math.rsqrt(tf.cast(tf.nn.l2_loss(t), tf.float32)), bound)
        clipped.append(t * tf.cast(scale, t.dtype))
    return clipped


def clip_over_replicas(gradients, limit):
    """Clips each variable's gradient of the whole global batch to ``limit`` (in a replica context).

    The gradients are summed over replicas first and divided back afterwards, so the
    optimizer's own sum over replicas gives the clipped whole-batch gradient.
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    if replicas > 1:
        gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
    return clip_each_by_norm(gradients, limit, 1.0 / replicas)


class Trainer:
    """A model and its optimizer under a strategy: distributed train and evaluation steps."""

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 strategy: tf.distribute.Strategy, config: TrainConfig, global_batch_size: int,
                 num_classes: int):
        replicas = strategy.num_replicas_in_sync
        if global_batch_size % replicas:
            raise TrainError(f"batch_size={global_batch_size} does not split over {replicas} replicas")
        keep_freed_memory()   # steps reuse their pages instead of faulting them in (movinet/allocator.py)
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.config = config
        self.global_batch_size = global_batch_size
        self.num_classes = num_classes
        with strategy.scope():
            optimizer.build(model.trainable_variables)
        self._gradients = tf.function(self._replica_gradients, jit_compile=config.jit_compile)
        self._train_step = tf.function(self._distributed_train_step)
        self._eval_step = tf.function(self._distributed_eval_step, reduce_retracing=True)

    def _replica_gradients(self, clips, labels):
        # Traced inside XLA (config.jit_compile), the step cannot hold the native custom ops.
        with native.disabled(self.config.jit_compile), tf.GradientTape() as tape:
            logits = tf.cast(self.model(clips, training=True), tf.float32)
            counts = batch_counts(labels, logits, self.num_classes, self.config.label_smoothing)
            loss = counts["loss"] / self.global_batch_size
            if self.model.losses:
                loss += tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses]) / (
                    self.strategy.num_replicas_in_sync)
            scaled = self.optimizer.scale_loss(loss)
        return tape.gradient(scaled, self.model.trainable_variables), counts

    def _clipped(self, gradients):
        """``clip_over_replicas`` at ``clipnorm``; with loss scaling the limit is scaled too, which
        clips the unscaled gradient."""
        limit = self.config.clipnorm
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            limit = limit * tf.cast(self.optimizer.dynamic_scale, tf.float32)
        return clip_over_replicas(gradients, limit)

    def _replica_train_step(self, clips, labels):
        gradients, counts = self._gradients(clips, labels)
        if self.config.clipnorm:
            gradients = self._clipped(gradients)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return counts

    def _distributed_train_step(self, batch):
        counts = self.strategy.run(self._replica_train_step, args=batch)
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in counts.items()}

    def _replica_eval_step(self, clips, labels):
        logits = tf.cast(self.model(clips, training=False), tf.float32)
        return batch_counts(labels, logits, self.num_classes)

    def _distributed_eval_step(self, batch):
        counts = self.strategy.run(self._replica_eval_step, args=batch)
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in counts.items()}

    def distribute(self, dataset: tf.data.Dataset):
        return self.strategy.experimental_distribute_dataset(dataset)

    def train_step(self, batch) -> dict[str, float]:
        return {k: float(v) for k, v in self._train_step(batch).items()}

    def batches(self, dataset: tf.data.Dataset):
        """One iterator over ``dataset``, repeated and distributed, that every epoch of a run draws
        its steps from in turn: the pipeline keeps its buffers full across epoch boundaries, and
        an epoch has its steps even where a pass yields fewer batches (skipped videos).

        (Dropping an iterator per epoch had stalled trials for ~5 s at a time; the cause was
        tf.data's model-based autotuning, which ``movinet.data.pipeline`` turns off.)
        """
        return iter(self.distribute(dataset.repeat()))

    def train_epoch(self, batches, steps: int | None, progress: keras.utils.Progbar | None = None,
                    deadline: float | None = None, on_step: Callable[[int, dict], None] | None = None
                    ) -> tuple[dict[str, float], bool]:
        """``steps`` batches from ``batches`` (``batches()``, or any iterable of distributed batches,
        all of which make the epoch when ``steps`` is None); returns (metrics, stopped by deadline)."""
        totals: dict[str, float] = {}
        stopped = False
        shown = -math.inf   # when the bar last got the learning rate: reading it evaluates the
        # schedule eagerly (~3 ms under a profiler; the demo search's fit took 1.4% longer with it),
        # so a silent bar never does and a shown one at most twice a second and at the last step
        for step, batch in enumerate(itertools.islice(batches, steps), start=1):
            for key, value in self.train_step(batch).items():
                totals[key] = totals.get(key, 0.0) + value
            metrics = summarize_counts(totals)
            if progress is not None and progress.verbose:
                values = [("loss", metrics["loss"]), ("top1", metrics["top1"])]
                if step == steps or time.monotonic() - shown >= 0.5:
                    values.append(("lr", self.learning_rate))
                    shown = time.monotonic()
                progress.update(step, values)
            if on_step is not None:
                on_step(step, metrics)
            if deadline is not None and time.monotonic() > deadline and step != steps:
                stopped = True
                break
        return summarize_counts(totals), stopped

    def evaluate(self, dataset) -> dict[str, float]:
        totals: dict[str, float] = {}
        for batch in self.distribute(dataset):
            for key, value in self._eval_step(batch).items():
                totals[key] = totals.get(key, 0.0) + float(value)
        return summarize_counts(totals)

    @property
    def learning_rate(self) -> float:
        optimizer = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        return float(optimizer.learning_rate)


_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def log_scalar(name: str, value: float) -> None:
    """A TensorBoard scalar, written with core TF so that TensorBoard need not be installed."""
    tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)


def optimizer_variables(optimizer: keras.optimizers.Optimizer) -> dict[str, keras.Variable]:
    """The optimizer's variables keyed by path without the optimizer's name.

    Keras numbers the names of later optimizers of a process ('adam_1'), which must not stop a
    run resumed in the same process; a loss-scale optimizer's inner variables get 'inner/'.
    """
    inner = getattr(optimizer, "inner_optimizer", None)
    inner_ids = {id(variable) for variable in inner.variables} if inner is not None else set()
    return {("inner/" if id(variable) in inner_ids else "") + variable.path.split("/", 1)[-1]: variable
            for variable in optimizer.variables}


# Per-variable slots of each optimizer (RMSprop: mean square and momentum; SGD: momentum).
OPTIMIZER_SLOTS = {"rmsprop": 2, "sgd": 1, "adam": 2, "adamw": 2}


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(spec: ModelSpec, mode: str, model_options: Mapping[str, Any], data_config: DataConfig,
                 train_config: TrainConfig, num_classes: int) -> None:
    """Fails before building a model whose training cannot fit in this machine's memory, rather
    than in an out-of-memory error midway through allocating it.

    The estimate is a lower bound from the cost model: float32 weights, their gradients and the
    optimizer's slots, and one batch of every layer's output kept for the backward pass.
    """
    from movinet.cost import cost

    size = cost(spec, mode, frames=data_config.frames, resolution=data_config.resolution,
                num_classes=num_classes, **model_options)
    weights = 4 * size.params * (2 + OPTIMIZER_SLOTS[train_config.optimizer])
    activations = 4 * data_config.batch_size * sum(math.prod(layer.out_shape) for layer in size.layers)
    available = physical_memory_bytes()
    if weights + activations > available:
        raise TrainError(f"{spec.name} ({mode}) needs at least {(weights + activations) / 2**30:,.1f} GiB to train "
                         f"({size.params:,} parameters with gradients and {train_config.optimizer} slots, and "
                         f"activations of a batch of {data_config.batch_size}), more than this machine's "
                         f"{available / 2**30:,.1f} GiB")


def _load_init_checkpoint(model: keras.Model, path: str) -> None:
    try:
        from movinet.checkpoints import load_weights
    except ImportError as err:
        raise TrainError(f"init_checkpoint={path!r} needs movinet.checkpoints.load_weights, which this "
                         f"installation lacks ({err})") from None
    load_weights(model, path, skip_classifier=True)


def train(model_spec_or_name: ModelSpec | str, mode: str, data_config: DataConfig,
          train_config: TrainConfig, run_dir: str | os.PathLike | None, *,
          model_options: Mapping[str, Any] | None = None, on_epoch_end: EpochHook | None = None,
          on_model_built: ModelHook | None = None) -> dict:
    """Trains a MoViNet on ``data_config`` into ``run_dir``, resuming a run found there.

    Args:
      model_spec_or_name: a published name ('a0'), a spec YAML path or a ModelSpec.
      mode: 'base' or 'stream' (a stream model trains on whole clips, zero initial states).
      run_dir: the run folder; None trains without writing anything (no checkpoints, logs,
        history or final model), which cannot be resumed.
      model_options: ModelOptions fields besides the recipe's dropout, stochastic depth and L2.
      on_epoch_end: called with each finished epoch's metrics and the ``device`` (a search
        reports them to its scheduler); raising from it interrupts training after that epoch's
        checkpoint.
      on_model_built: called with the model once it is built (and restored), before the first
        step; a search times it per frame there instead of building a second model.
    Returns:
      The last evaluation: top1, top5, loss (validation) with train_loss, train_top1, epoch,
      steps, seconds, stopped_by_budget, skipped_files, params, run_dir (None without one),
      device (``movinet.devices.describe`` of the devices trained on) and the precision used
      (``train_config.precision``, or what ``"auto"`` chose for those devices).
    """
    spec = load_spec(model_spec_or_name)
    run_dir = None if run_dir is None else Path(run_dir)
    model_options = dict(model_options or {})
    # Multi-worker collectives must be set up before TensorFlow runs anything else.
    strategy = make_strategy(train_config.strategy, train_config.tpu_address)
    devices = strategy_devices(strategy)
    train_config = dataclasses.replace(train_config,
                                       precision=resolve_precision(train_config.precision, devices))
    if train_config.verbose:
        print(f"training on {describe(devices)} in {train_config.precision}")
    # Before the datasets: tf.data derives its shuffle and random seeds from TF's global seed too.
    keras.utils.set_random_seed(train_config.seed)
    train_ds, val_ds, info = make_datasets(data_config)
    config = resolved_config(spec, mode, model_options, data_config, train_config)
    config["num_classes"] = info.num_classes
    config["class_names"] = info.class_names
    check_resumable(run_dir, config)
    check_memory(spec, mode, model_options, data_config, train_config, info.num_classes)

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(train_config.precision)
    folder = RunFolder(run_dir, is_chief(strategy))
    try:
        steps_per_epoch = train_config.steps_per_epoch or info.num_train // data_config.batch_size
        with strategy.scope():
            model = build_run_model(config, info.num_classes, train_config)
            optimizer = make_optimizer(train_config, train_config.epochs * steps_per_epoch)
            epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        trainer = Trainer(model, optimizer, strategy, train_config, data_config.batch_size, info.num_classes)
        checkpoint = tf.train.Checkpoint(model=model_variables(model), optimizer=optimizer_variables(optimizer),
                                         epoch=epoch)
        manager = None if folder.checkpoints is None else tf.train.CheckpointManager(
            checkpoint, str(folder.checkpoints), max_to_keep=train_config.keep_checkpoints)
        if manager is not None and manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            folder.truncate_history(int(epoch.numpy()))
        elif train_config.init_checkpoint:
            _load_init_checkpoint(model, train_config.init_checkpoint)
        if on_model_built is not None:
            on_model_built(model)
        folder.write_config(config)
        return _run_epochs(trainer, manager, epoch, folder, train_ds, val_ds, info, train_config,
                           steps_per_epoch, on_epoch_end, describe(devices))
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        folder.close()


def _run_epochs(trainer: Trainer, manager: tf.train.CheckpointManager | None, epoch: tf.Variable,
                folder: RunFolder, train_ds, val_ds, info: DataInfo, config: TrainConfig,
                steps_per_epoch: int, on_epoch_end: EpochHook | None, device: str) -> dict:
    started = time.monotonic()
    deadline = started + config.max_seconds if config.max_seconds else None
    train_writer, val_writer = folder.writer("train"), folder.writer("val")
    optimizer_steps = lambda: int(trainer.optimizer.iterations.numpy())  # noqa: E731

    def log_step(step: int, metrics: dict) -> None:
        if step % config.log_every_steps == 0:
            with train_writer.as_default(step=optimizer_steps()):
                log_scalar("running_loss", metrics["loss"])
                log_scalar("learning_rate", trainer.learning_rate)

    result = folder.last_result()
    stopped = False
    batches = None   # made with the first epoch to run: a run found complete starts no pipeline
    while int(epoch.numpy()) < config.epochs and not stopped:
        if batches is None:
            batches = trainer.batches(train_ds)
        number = int(epoch.numpy()) + 1
        if config.verbose:
            print(f"epoch {number}/{config.epochs}")
        progress = keras.utils.Progbar(steps_per_epoch, verbose=config.verbose,
                                       stateful_metrics=["loss", "top1", "lr"])
        began = time.monotonic()
        train_metrics, stopped = trainer.train_epoch(batches, steps_per_epoch, progress, deadline,
                                                     log_step if folder.writes else None)
        val_metrics = trainer.evaluate(val_ds)
        row = {"epoch": number, "train_loss": train_metrics["loss"], "train_top1": train_metrics["top1"],
               "loss": val_metrics["loss"], "top1": val_metrics["top1"], "top5": val_metrics["top5"],
               "learning_rate": trainer.learning_rate, "steps": optimizer_steps(),
               "seconds": round(time.monotonic() - began, 3), "skipped_files": info.skipped_count,
               "complete": not stopped}
        for writer, values in ((train_writer, train_metrics), (val_writer, val_metrics)):
            with writer.as_default(step=number):
                for key in ("loss", "top1", "top5"):
                    log_scalar(f"epoch_{key}", values[key])
        if not stopped:
            epoch.assign(number)
            if manager is not None:
                manager.save(checkpoint_number=number)
        folder.append_history(row)
        if config.verbose:
            print(f"epoch {number}: val top1 {row['top1']:.4f} top5 {row['top5']:.4f} loss {row['loss']:.4f}"
                  + (" (time budget spent)" if stopped else ""))
        result = row
        if on_epoch_end is not None:
            on_epoch_end({**row, "device": device})
    train_writer.flush()
    val_writer.flush()
    if folder.writes:
        from movinet.checkpoints import save

        save(trainer.model, folder.root / "model")
    return {**result, "stopped_by_budget": stopped, "seconds": round(time.monotonic() - started, 3),
            "params": trainer.model.count_params(), "run_dir": None if folder.root is None else str(folder.root),
            "device": device, "precision": config.precision}
