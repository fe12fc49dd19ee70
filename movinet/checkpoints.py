"""Checkpoints in the official object-graph layout: load released ones, write our own.

The official ``tf.train.Checkpoint(model=MovinetClassifier)`` keys are structural (TF object-graph
paths, not variable names): ``model/layer_with_weights-0/layer_with_weights-{k}/...`` for the stem
(k=0), the block layers in order (k=1..N) and the head (k=N+1), and
``model/layer_with_weights-1/...`` for the classifier. Keras 3 variables are matched to those
keys by structure, never by auto-generated names. Kernel layouts differ between conv types
only by singleton axes, so every conversion (3d_2plus1d -> 2plus1d included) is a reshape.

A directory written by :func:`save` also holds ``spec.yaml`` and ``options.json`` so that
the checkpoint alone rebuilds its model (:func:`load_model`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from movinet.options import ModelOptions
from movinet.spec import dump_spec, load_spec

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
OFFICIAL_MODEL_PREFIX = "model/layer_with_weights-"   # a training run's checkpoint keys have no such prefix
BN_FIELDS = ("gamma", "beta", "moving_mean", "moving_variance")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; lists what is missing, unexpected or misshaped."""


def _bn(prefix, bn, name="_batch_norm"):
    return [(f"{prefix}/{name}/{field}", getattr(bn, field)) for field in BN_FIELDS]


def _conv(prefix, conv):
    entries = [(f"{prefix}/_conv/kernel", conv.kernel)]
    if conv.bias is not None:
        entries.append((f"{prefix}/_conv/bias", conv.bias))
    if conv.bn is not None:
        entries += _bn(prefix, conv.bn)
    return entries


def structural_entries(model, include_classifier: bool = True):
    """[(normalized official key, variable)] for every weight of ``model``.

    Normalized keys drop ``/.ATTRIBUTES/VARIABLE_VALUE``, collapse the MobileConv2D
    ``_conv/_conv`` nesting to ``_conv`` and call depthwise kernels ``kernel``.
    """
    backbone = "model/layer_with_weights-0"
    entries = _conv(f"{backbone}/layer_with_weights-0/_stem", model.stem)
    for k, layer in enumerate(model.blocks, start=1):
        p = f"{backbone}/layer_with_weights-{k}"
        entries += _conv(f"{p}/_expansion", layer.expansion)
        feature = layer.feature
        if feature.separable:
            entries += [(f"{p}/_feature/_conv/kernel", feature.spatial.kernel)]
            entries += _bn(f"{p}/_feature", feature.spatial.bn)
            if feature.kernel_t > 1:
                entries.append((f"{p}/_feature/_conv_temporal/kernel", feature.temporal_kernel))
                entries += _bn(f"{p}/_feature", feature.bn_temporal, "_batch_norm_temporal")
        else:
            entries.append((f"{p}/_feature/_conv/kernel", feature.kernel))
            entries += _bn(f"{p}/_feature", feature.bn)
        if layer.se is not None:
            entries += _conv(f"{p}/_attention/_se_reduce", layer.se.reduce)
            entries += _conv(f"{p}/_attention/_se_expand", layer.se.expand)
            if layer.se.pos_encoding is not None:
                entries.append((f"{p}/_attention/_pos_encoding/_rezero/scale", layer.se.pos_encoding.scale))
        entries += _conv(f"{p}/_projection", layer.projection)
        if layer.skip is not None:
            entries += _conv(f"{p}/_skip/_projection", layer.skip)
        entries.append((f"{p}/_mobile_bottleneck/_rezero/scale", layer.rezero))
    entries += _conv(f"{backbone}/layer_with_weights-{len(model.blocks) + 1}/_project", model.head.project)
    if include_classifier:
        entries += _conv("model/layer_with_weights-1/_head", model.classifier.head)
        entries += _conv("model/layer_with_weights-1/_classifier", model.classifier.classifier)
    return entries


def run_entries(model):
    """[(key, variable)] for every weight of ``model`` as a training run's checkpoint names it: by
    its path below the model (``movinet.runfolder.model_variables``), each "/" written ".S" as TF's
    object graph writes a dict key."""
    return [("model/" + variable.path.split("/", 1)[-1].replace("/", ".S"), variable) for variable in model.weights]


def normalize_key(key: str) -> str:
    key = key[: -len(SUFFIX)] if key.endswith(SUFFIX) else key
    while "/_conv/_conv/" in key:
        key = key.replace("/_conv/_conv/", "/_conv/")
    key = key.replace("/_conv_temporal/_conv/", "/_conv_temporal/")
    return key.replace("/depthwise_kernel", "/kernel")


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _is_archive(path) -> bool:
    return Path(path).is_file() and Path(path).name.endswith((".tar.gz", ".tgz", ".tar"))


def resolve_checkpoint_path(path: "str | os.PathLike", workdir: str | None = None) -> str:
    """A checkpoint prefix from a directory, a prefix, or a .tar.gz holding one (extracted into
    ``workdir``, else a new temporary folder the caller owns: ``opened_checkpoint`` removes it)."""
    path = Path(path)
    if not path.exists() and not Path(str(path) + ".index").exists():
        raise CheckpointError(f"{path}: no such checkpoint (not a file, directory or prefix)")
    if _is_archive(path):
        workdir = workdir or tempfile.mkdtemp(prefix="movinet_ckpt_")
        try:
            with tarfile.open(path) as archive:
                archive.extractall(workdir, filter="data")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise CheckpointError(f"{path}: not a readable checkpoint archive ({err})") from None
        path = Path(workdir)
    if path.is_dir():
        latest = tf.train.latest_checkpoint(str(path))
        if latest is None:
            indexes = sorted(path.rglob("*.index"))
            if not indexes:
                raise CheckpointError(f"{path}: no TensorFlow checkpoint (no *.index file) inside")
            latest = str(indexes[-1])[: -len(".index")]
        return latest
    if path.suffix == ".index":
        return str(path)[: -len(".index")]
    return str(path)


@contextlib.contextmanager
def opened_checkpoint(path: "str | os.PathLike"):
    """``resolve_checkpoint_path`` for the length of a ``with``: an archive is extracted into a
    temporary folder that is removed afterwards (a load would otherwise leave one per call)."""
    if _is_archive(path):
        with tempfile.TemporaryDirectory(prefix="movinet_ckpt_") as workdir:
            yield resolve_checkpoint_path(path, workdir)
    else:
        yield resolve_checkpoint_path(path)


def load_weights(model, path: "str | os.PathLike", skip_classifier: bool = False) -> dict:
    """Loads an official (or our own) checkpoint into ``model``; all or nothing. A training run's
    checkpoints (``RUN/checkpoints``, whose keys follow the variables' paths) load too.

    Args:
      skip_classifier: leave the classifier as initialised (fine-tuning to new classes).
    Returns:
      {"loaded": n, "checkpoint": prefix (inside the archive, when ``path`` is one)}.
    Raises:
      CheckpointError listing missing, unexpected and wrongly shaped variables; no variable
      is assigned then.
    """
    with opened_checkpoint(path) as prefix:
        shown = f"{path}:{Path(prefix).name}" if _is_archive(path) else prefix
        return _load_weights(model, prefix, shown, skip_classifier)


def _load_weights(model, prefix: str, shown: str, skip_classifier: bool) -> dict:
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as err:
        raise CheckpointError(f"{shown}: cannot read checkpoint ({str(err).splitlines()[0]})") from None
    shapes = reader.get_variable_to_shape_map()
    if any(key.startswith(OFFICIAL_MODEL_PREFIX) for key in shapes):
        available = {normalize_key(key): key for key in shapes
                     if key.startswith("model/") and key.endswith(SUFFIX) and "/_optimizer" not in key}
        entries = structural_entries(model, include_classifier=not skip_classifier)
        skipped = {key for key in available if key.startswith("model/layer_with_weights-1/")}
    else:   # a training run's checkpoint (RUN/checkpoints)
        available = {key[: -len(SUFFIX)]: key for key in shapes if key.startswith("model/") and key.endswith(SUFFIX)}
        entries = run_entries(model)
        classifier = {id(variable) for variable in model.classifier.weights}
        skipped = {key for key, variable in entries if id(variable) in classifier}
    if skip_classifier:
        available = {k: v for k, v in available.items() if k not in skipped}
        entries = [(key, variable) for key, variable in entries if key not in skipped]
    expected = {key for key, _ in entries}
    missing = [key for key, _ in entries if key not in available]
    unexpected = sorted(set(available) - expected)
    misshaped = []
    for key, variable in entries:
        if key in available:
            shape = shapes[available[key]]
            if _squeezed(shape) != _squeezed(variable.shape):
                misshaped.append(f"{key}: checkpoint {list(shape)} vs model {list(variable.shape)}")
    if missing or unexpected or misshaped:
        lines = [f"checkpoint {shown} does not fit {model.spec.name} ({model.mode}, conv_type="
                 f"{model.options.conv_type}, se_type={model.options.se_type}, "
                 f"{model.options.num_classes} classes):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if items:
                shown = "\n    ".join(items[:8])
                more = f"\n    ... and {len(items) - 8} more" if len(items) > 8 else ""
                lines.append(f"  {title} ({len(items)}):\n    {shown}{more}")
        raise CheckpointError("\n".join(lines))
    for key, variable in entries:
        variable.assign(np.reshape(reader.get_tensor(available[key]), variable.shape))
    return {"loaded": len(entries), "checkpoint": shown}


def official_shape(key: str, variable, options: ModelOptions) -> list[int]:
    """The shape the official code gives this variable for ``options.conv_type``."""
    shape = list(variable.shape)
    if key.endswith("/bias") or "/_batch_norm" in key or key.endswith("/scale"):
        return shape
    conv3d = options.conv_type != "2plus1d"
    if "/_feature/_conv_temporal/" in key:                     # [kt, 1, C, 1]
        return [shape[0], 1, 1, 1, shape[2]] if conv3d else shape
    if "/_feature/_conv/" in key:
        if len(shape) == 5:                                    # full depthwise 3D
            return shape
        return [1, shape[0], shape[1], 1, shape[2]] if conv3d else shape   # [kh, kw, C, 1]
    if len(shape) == 2:                                        # pointwise [Cin, Cout]
        return [1, 1, 1, *shape] if conv3d else [1, 1, *shape]
    return [1, *shape] if conv3d else shape                    # stem [kh, kw, 3, F]


def official_key(key: str, options: ModelOptions) -> str:
    """Back from a normalized key to the official one (2plus1d nests MobileConv2D once more)."""
    if options.conv_type == "2plus1d":
        key = key.replace("/_conv/", "/_conv/_conv/").replace("/_conv_temporal/", "/_conv_temporal/_conv/")
        if "/_feature/_conv" in key and key.endswith("/kernel"):
            key = key[: -len("kernel")] + "depthwise_kernel"
    return key + SUFFIX


def save_official(model, prefix: "str | os.PathLike") -> str:
    """Writes ``model``'s weights under the official keys and shapes (a V2 checkpoint bundle)."""
    prefix = str(prefix)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    names, tensors = [], []
    for key, variable in structural_entries(model):
        names.append(official_key(key, model.options))
        tensors.append(tf.reshape(tf.convert_to_tensor(variable), official_shape(key, variable, model.options)))
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    return prefix


def save(model, directory: "str | os.PathLike") -> Path:
    """Saves weights (official layout), spec.yaml and options.json into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_official(model, directory / "ckpt")
    (directory / "checkpoint").write_text('model_checkpoint_path: "ckpt"\n')
    (directory / "spec.yaml").write_text(dump_spec(model.spec))
    (directory / "options.json").write_text(json.dumps(model.options.to_dict(), indent=1) + "\n")
    return directory


def load_model(directory: "str | os.PathLike"):
    """Rebuilds the model saved by :func:`save` and loads its weights."""
    from movinet.model import MovinetClassifier

    directory = Path(directory)
    for name in ("spec.yaml", "options.json"):
        if not (directory / name).exists():
            raise CheckpointError(f"{directory}: no {name}; load official checkpoints with load_weights(model, path)")
    spec = load_spec(directory / "spec.yaml")
    options = ModelOptions(**json.loads((directory / "options.json").read_text()))
    model = MovinetClassifier(spec, options, name=f"movinet_{spec.name}_{'stream' if options.causal else 'base'}")
    model.build()
    load_weights(model, directory)
    return model
