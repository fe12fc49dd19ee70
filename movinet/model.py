"""One builder for every MoViNet: a spec plus options -> a Keras 3 model.

    image [B,T,H,W,3] in [0,1]
      -> stem (1x3x3 conv /2) -> block0 ... block4 (Bottleneck layers) -> head (1x1x1 + pool)
      -> classifier (1x1x1 + act -> dropout -> 1x1x1) -> logits [B, classes]

Called with a tensor the model returns logits (zero initial states: what ``fit`` uses).
Called with ``{**states, "image": chunk}`` it returns ``(logits, new_states)``; carrying the
states over consecutive chunks gives the logits of the whole clip (stream mode).
"""

from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

from movinet import optimizers as _optimizers   # also registers them: a model compiled with one reloads
from movinet.cost import se_hidden, state_shapes
from movinet.layers import Bottleneck, Classifier, ConvNorm, ConvSettings, Head
from movinet.options import ModelOptions, resolve_options
from movinet.spec import ModelSpec, load_spec, spec_from_dict


def states_by_owner(states: Mapping) -> dict[str, dict]:
    """{"state_block{b}_layer{l}" or "state_head": that layer's states}.

    Each layer gets only its own states: Keras converts every tensor in a layer's arguments at
    each call, and the whole dict passed to every block made that conversion a tenth of an eager
    stream step.
    """
    own: dict[str, dict] = {}
    for name, value in states.items():
        parts = name.split("_", 3)
        owner = "_".join(parts[:3 if len(parts) > 2 and parts[1].startswith("block") else 2])
        own.setdefault(owner, {})[name] = value
    return own


class StateError(ValueError):
    """A state dict that does not fit the model: names the missing, unexpected or misshaped states."""


def _image_of(inputs: Mapping, model_name: str) -> str:
    """The key of the frames in a dict of inputs: states come with the frames, never alone."""
    if "image" not in inputs:
        raise StateError(f"{model_name}: the inputs hold {len(inputs)} states but no \"image\" "
                         "(the frames to run): call the model with {**states, \"image\": frames}")
    return "image"


@keras.saving.register_keras_serializable(package="movinet")
class MovinetClassifier(keras.Model):
    """A MoViNet backbone and classifier built from ``spec`` with ``options``."""

    def __init__(self, spec: ModelSpec | Mapping, options: ModelOptions | Mapping, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec if isinstance(spec, ModelSpec) else spec_from_dict(spec, "<config>")
        self.options = options if isinstance(options, ModelOptions) else ModelOptions(**options)
        spec, options = self.spec, self.options
        settings = ConvSettings.from_options(options)
        self.stem = ConvNorm(spec.stem.filters, spec.stem.kernel[1:], spec.stem.stride[1],
                             activation=options.activation, settings=settings, name="stem")
        blocks = []
        for index, (b, l, cin, cout, layer) in enumerate(spec.iter_layers(), start=1):
            drop_rate = options.stochastic_depth_drop_rate * index / spec.num_layers
            block = Bottleneck(cin, cout, layer.expand, layer.kernel, layer.stride[1], options,
                               se_hidden(layer.expand, options), drop_rate, f"state_block{b}_layer{l}",
                               name=f"block{b}_layer{l}")
            # As attributes too: tf.train.Checkpoint and tf.saved_model do not walk Keras lists.
            setattr(self, block.name, block)
            blocks.append(block)
        self.blocks = blocks
        self.head = Head(spec.head.project_filters, options, name="head")
        self.classifier = Classifier(spec.head.head_filters, options.num_classes, options.classifier_activation,
                                     options.dropout_rate, settings=settings, name="classifier_head")

    def build(self, input_shape=None):
        if isinstance(input_shape, dict):
            input_shape = input_shape[_image_of(input_shape, self.spec.name)]
        input_shape = tuple(input_shape or (None, None, None, None, 3))
        spec = self.spec
        self.stem.build(input_shape)
        channels = spec.stem.filters
        for layer in self.blocks:
            layer.build((None, None, None, None, channels))
            channels = layer.projection.filters
        self.head.build((None, None, None, None, channels))
        self.classifier.build((None, 1, 1, 1, spec.head.project_filters))
        self.built = True

    def compile(self, optimizer="rmsprop", *args, **kwargs):
        """``keras.Model.compile``; an optimizer given by Keras's name ("adam", "rmsprop", "sgd",
        "adamw") is the fused one of ``movinet.optimizers`` with the same defaults and updates."""
        return super().compile(_optimizers.fused(optimizer), *args, **kwargs)

    def compile_from_config(self, config):
        # What Keras does when it loads a compiled model, which it skips (with a warning) for a
        # class that overrides `compile`; ours only maps optimizer names, so the saved settings
        # compile as they were saved.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def make_train_function(self, force=False):
        # Without a distribution strategy Keras builds the optimizer inside the traced train step,
        # where every slot variable is created through the tracing machinery: Adam's slots for a
        # t0 took ~28 s of its first `fit` on 2 cores. Built here, eagerly, they take ~1 s.
        if self.built and self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
        return super().make_train_function(force)

    def call_endpoints(self, image, states=None, training=None):
        """Runs the backbone; returns ({stem, block{b}_layer{l}, head: tensor}, new_states)."""
        own = states_by_owner(states or {})
        x = tf.cast(image, self.compute_dtype)
        endpoints = {}
        new_states = {}
        x = self.stem(x, training=training)
        endpoints["stem"] = x
        for layer in self.blocks:
            x, layer_states = layer(x, own.get(layer.state_prefix, {}), training=training)
            new_states.update(layer_states)
            endpoints[layer.name] = x
        x, head_states = self.head(x, own.get("state_head", {}), training=training)
        new_states.update(head_states)
        endpoints["head"] = x
        return endpoints, new_states

    def call(self, inputs, training=None):
        if isinstance(inputs, Mapping):
            image = inputs[_image_of(inputs, self.spec.name)]
            states = {name: value for name, value in inputs.items() if name != "image"}
            if states:
                self.check_states(states, image.shape)
            endpoints, new_states = self.call_endpoints(image, states, training)
            return self.classifier(endpoints["head"], training=training), new_states
        endpoints, _ = self.call_endpoints(inputs, None, training)
        return self.classifier(endpoints["head"], training=training)

    def state_shapes(self, video_shape) -> dict[str, tuple[tuple[int, ...], str]]:
        """{name: (shape, dtype)} of the stream states for a [B, T, H, W, 3] video."""
        # Scalar tensors stay as they are: a traced ``init_states`` takes the shape as an input.
        batch, _, height, width = (d if tf.is_tensor(d) else int(d) for d in tuple(video_shape)[:4])
        return state_shapes(self.spec, self.options, batch, height, width)

    def init_states(self, video_shape) -> dict[str, tf.Tensor]:
        """Zero states, the start of a video of shape [B, T, H, W, 3] (T is not used).

        Buffers take the model's compute dtype (float16 under mixed precision), counters int32.
        """
        return {name: tf.zeros(shape, self.compute_dtype if dtype == "float32" else dtype)
                for name, (shape, dtype) in self.state_shapes(video_shape).items()}

    def check_states(self, states: Mapping, image_shape) -> None:
        if not self.options.causal:
            raise StateError(f"{self.spec.name} is a base (non-causal) model: it takes no stream states")
        if any(d is None for d in image_shape[:4]):
            expected = {name: None for name in state_shapes(self.spec, self.options, 1, 32, 32)}
        else:
            expected = self.state_shapes(image_shape)
        missing = sorted(set(expected) - set(states))
        unexpected = sorted(set(states) - set(expected))
        problems = []
        if missing:
            problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)})")
        if unexpected:
            problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        for name in sorted(set(expected) & set(states)):
            if expected[name] is None:
                continue
            shape = tuple(states[name].shape)
            want = expected[name][0]
            if len(shape) != len(want) or any(s is not None and s != w for s, w in zip(shape, want)):
                problems.append(f"{name} has shape {list(shape)}, expected {list(want)}")
        if problems:
            raise StateError(f"state dict does not fit {self.spec.name} ({self.mode}): " + "; ".join(problems))

    @property
    def mode(self) -> str:
        return "stream" if self.options.causal else "base"

    @property
    def num_classes(self) -> int:
        return self.options.num_classes

    @property
    def video_input(self):
        """The clip the spec was published for (frames, resolution, fps), or None."""
        return self.spec.input

    def get_config(self):
        config = super().get_config()
        config.update(spec=self.spec.to_dict(), options=self.options.to_dict())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(spec=config.pop("spec"), options=config.pop("options"), **config)


def fold_batch_norm(model, scale_states: bool = False):
    """An inference-only copy of ``model`` with every BN and ReZero scale folded into its convolution.

    The outputs are those of ``model`` (up to float rounding) with no BN or ReZero ops (A0
    stream: 1,876 graph ops per step instead of 2,730), and constant factors of activations
    (hard_swish's 1/6, hard_sigmoid's) moved into the linear layers after them; the copy refuses
    to train (FoldedError). TF Lite conversion folds BN the same way on its own. A model made of
    MovinetClassifiers (an ensemble of ``family.ensemble``) folds its members with its own
    ``fold_batch_norm()``.

    Args:
      scale_states: also move the factors of activations that a stream state holds (stream
        buffers, pools): the copy's states then hold scaled values, which only the copy itself
        reads right. For an export that keeps its states inside (int8 TF Lite); without it the
        states are those of ``model``.
    """
    if not isinstance(model, MovinetClassifier):
        return model.fold_batch_norm()
    folded = MovinetClassifier.from_config(model.get_config())
    folded.build()
    folded.set_weights(model.get_weights())
    first = folded.blocks[0]
    # The stem's output feeds only the first layer's expansion and skip projection (no state).
    stem_scale = folded.stem.drop_output_factor() if first.skip is not None else 1.0
    folded.stem.fold()
    for index, layer in enumerate(folded.blocks):
        layer.fold(input_scale=stem_scale if index == 0 else 1.0, scale_states=scale_states)
    folded.classifier.fold(input_scale=folded.head.fold(scale_states))
    return folded


def build_model(spec: "ModelSpec | str", mode: str = "base", *, num_classes: int = 600,
                input_shape=None, **options) -> MovinetClassifier:
    """Builds a MoViNet with its weights created.

    Args:
      spec: a published name ('a0' ... 'a5', 't0'), a spec YAML path, or a ModelSpec.
      mode: 'base' (non-causal 3D) or 'stream' (causal, explicit states).
      num_classes: classifier width.
      input_shape: optional [B, T, H, W, 3] to build with (weights do not depend on it).
      **options: any ModelOptions field (conv_type, se_type, activation, dropout_rate, ...).
    """
    spec = load_spec(spec)
    resolved = resolve_options(spec, mode, num_classes=num_classes, **options)
    model = MovinetClassifier(spec, resolved, name=f"movinet_{spec.name}_{mode}")
    model.build(input_shape)
    return model
