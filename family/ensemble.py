"""Ensembles of MoViNets as one Keras model: one video in, the members' mean logits out.

    resolution ensemble (MoViNet-A6 = A4 + A5, README):
      video [B,T,H,W,3] -> resize each frame to r_k -> member k -> logits_k -> mean over k

    temporal ensemble (MoViNets, arXiv 2103.11511: models at 1/N of the frame rate on
    interleaved frames):
      video [B,T,H,W,3] -> frames k, k+N, k+2N, ... -> member k -> logits_k -> mean over k

Like a single MovinetClassifier, an ensemble called with a tensor returns logits, and in stream
mode called with ``{**states, "image": chunk}`` returns ``(logits, new_states)``. The states of all
members travel in that one dict, each under its member's name (``a4/state_block0_layer0_...``);
streaming chunk by chunk gives the logits of the whole clip.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import keras
import tensorflow as tf

from movinet.model import MovinetClassifier, StateError, fold_batch_norm
from movinet.spec import InputSpec

SEPARATOR = "/"


class EnsembleError(ValueError):
    """Members that cannot be ensembled (different class counts or modes, repeated names)."""


def resize_frames(video, size: int):
    """Each frame of [B, T, H, W, C] resized to size x size (bilinear, tf.image.resize)."""
    if video.shape[2] == size and video.shape[3] == size:
        return video
    shape = tf.shape(video)
    frames = tf.reshape(video, tf.concat([[-1], shape[2:]], axis=0))
    resized = tf.image.resize(frames, [size, size])
    return tf.reshape(resized, tf.concat([shape[:2], [size, size], shape[4:]], axis=0))


class Ensemble(keras.Model):
    """Members with one class count and one mode whose logits are averaged.

    Subclasses say which part of the video each member sees (``member_video``) and, in stream
    mode, how a chunk is shared out (``call_stream``).
    """

    def __init__(self, members: Sequence[MovinetClassifier], member_names: Sequence[str],
                 video_input: "InputSpec | Mapping | None" = None, **kwargs):
        super().__init__(**kwargs)
        # The video the ensemble is fed (frames, resolution, fps): the defaults of export and predict.
        self.video_input = InputSpec(**video_input) if isinstance(video_input, Mapping) else video_input
        members = [keras.saving.deserialize_keras_object(m) if isinstance(m, Mapping) else m for m in members]
        member_names = list(member_names)
        if len(members) < 2 or len(members) != len(member_names):
            raise EnsembleError(f"an ensemble needs two or more members, each with a name; got "
                                f"{len(members)} members and names {member_names}")
        if len(set(member_names)) != len(member_names) or any(SEPARATOR in n or not n for n in member_names):
            raise EnsembleError(f"member names {member_names}: expected distinct non-empty names without "
                                f"{SEPARATOR!r} (they prefix the stream states)")
        for name, member in zip(member_names[1:], members[1:]):
            first = members[0]
            if member.options.num_classes != first.options.num_classes:
                raise EnsembleError(f"member {name!r} has {member.options.num_classes} classes but member "
                                    f"{member_names[0]!r} has {first.options.num_classes}: averaged logits "
                                    "need one class list")
            if member.mode != first.mode:
                raise EnsembleError(f"member {name!r} is a {member.mode} model but member {member_names[0]!r} "
                                    f"is a {first.mode} model")
        for member in members:
            if not member.built:
                member.build()
        self.members = members
        self.member_names = member_names

    @property
    def mode(self) -> str:
        return self.members[0].mode

    @property
    def num_classes(self) -> int:
        return self.members[0].options.num_classes

    def build(self, input_shape=None):
        self.built = True

    def member_video(self, k: int, video):
        """What member ``k`` sees of a whole video."""
        raise NotImplementedError

    def member_video_shape(self, k: int, video_shape) -> list:
        return list(video_shape)

    def call(self, inputs, training=None):
        if isinstance(inputs, Mapping):
            image = inputs["image"]
            states = {name: value for name, value in inputs.items() if name != "image"}
            self.check_state_names(states)
            return self.call_stream(image, states, training)
        logits = [member(self.member_video(k, inputs), training=training) for k, member in enumerate(self.members)]
        return tf.add_n(logits) / float(len(logits))

    def call_stream(self, image, states: Mapping, training=None):
        raise NotImplementedError

    def member_states(self, k: int, states: Mapping) -> dict:
        prefix = self.member_names[k] + SEPARATOR
        return {name[len(prefix):]: value for name, value in states.items() if name.startswith(prefix)}

    def prefixed(self, k: int, states: Mapping) -> dict:
        return {f"{self.member_names[k]}{SEPARATOR}{name}": value for name, value in states.items()}

    def state_shapes(self, video_shape) -> dict[str, tuple[tuple[int, ...], str]]:
        """{name: (shape, dtype)} of every member's states (prefixed) for a [B, T, H, W, 3] video."""
        shapes = {}
        for k, member in enumerate(self.members):
            shapes.update(self.prefixed(k, member.state_shapes(self.member_video_shape(k, video_shape))))
        return shapes

    @functools.cached_property
    def state_names(self) -> frozenset:
        """The names of the stream states (they do not depend on the video's size)."""
        return frozenset(self.state_shapes([1, 1, 32, 32, 3]))

    def check_state_names(self, states: Mapping) -> None:
        """Every member's states, and no others, must come in (members check their shapes)."""
        if self.mode != "stream":
            raise StateError(f"{self.name} is a base (non-causal) ensemble: it takes no stream states")
        expected = self.state_names
        missing, unexpected = sorted(expected - set(states)), sorted(set(states) - expected)
        if missing or unexpected:
            raise StateError(f"state dict does not fit {self.name}: missing {missing[:5]} ({len(missing)}), "
                             f"unexpected {unexpected[:5]} ({len(unexpected)}); start from init_states()")

    def init_states(self, video_shape) -> dict[str, tf.Tensor]:
        """Zero states, the start of a video of shape [B, T, H, W, 3]."""
        return {name: tf.zeros(shape, dtype) for name, (shape, dtype) in self.state_shapes(video_shape).items()}

    def fold_batch_norm(self) -> "Ensemble":
        """An inference-only copy whose members have their batch norms folded (movinet.fold_batch_norm)."""
        config = self.get_config()
        config["members"] = [fold_batch_norm(member) for member in self.members]
        return type(self).from_config(config)

    def get_config(self):
        config = super().get_config()
        config.update(members=[keras.saving.serialize_keras_object(m) for m in self.members],
                      member_names=list(self.member_names),
                      video_input=dataclasses.asdict(self.video_input) if self.video_input else None)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="movinet_family")
class ResolutionEnsemble(Ensemble):
    """Each member sees the whole video, every frame resized to the member's own resolution."""

    def __init__(self, members, member_names, resolutions: Sequence[int], **kwargs):
        super().__init__(members, member_names, **kwargs)
        if len(resolutions) != len(self.members) or any(int(r) < 1 for r in resolutions):
            raise EnsembleError(f"resolutions {list(resolutions)}: expected one positive size per member "
                                f"{self.member_names}")
        self.resolutions = [int(r) for r in resolutions]

    def member_video(self, k, video):
        return resize_frames(video, self.resolutions[k])

    def member_video_shape(self, k, video_shape):
        batch, frames = list(video_shape)[:2]
        return [batch, frames, self.resolutions[k], self.resolutions[k], 3]

    def call_stream(self, image, states, training=None):
        logits, new_states = [], {}
        for k, member in enumerate(self.members):
            member_logits, member_states = member(
                {**self.member_states(k, states), "image": self.member_video(k, image)}, training=training)
            logits.append(member_logits)
            new_states.update(self.prefixed(k, member_states))
        return tf.add_n(logits) / float(len(logits)), new_states

    def get_config(self):
        return {**super().get_config(), "resolutions": list(self.resolutions)}


@keras.saving.register_keras_serializable(package="movinet_family")
class TemporalEnsemble(Ensemble):
    """N members at 1/N of the frame rate: member k sees frames k, k+N, k+2N, ...

    In stream mode a chunk may have any length: the state ``frame_count`` says where the chunk
    starts, so each frame goes to the member whose turn it is, and ``<member>/logits`` keeps each
    member's latest logits for the chunks that bring it no frame. Until a member has seen a
    frame it is left out of the mean. A whole clip needs at least N frames.
    """

    COUNT = "frame_count"
    LOGITS = "logits"

    def member_video(self, k, video):
        count = len(self.members)
        if video.shape[1] is not None and video.shape[1] < count:
            raise ValueError(f"a {count}-member temporal ensemble needs clips of at least {count} frames, "
                             f"got {video.shape[1]}")
        return video[:, k::count]

    def state_shapes(self, video_shape):
        shapes = super().state_shapes(video_shape)
        batch = video_shape[0]
        for k in range(len(self.members)):
            shapes[f"{self.member_names[k]}{SEPARATOR}{self.LOGITS}"] = ((batch, self.num_classes), "float32")
        shapes[self.COUNT] = ((1,), "int32")
        return shapes

    def call_stream(self, image, states, training=None):
        count = len(self.members)
        seen = tf.cast(states[self.COUNT], tf.int32)[0]
        one_frame = image.shape[1] == 1
        frames = 1 if one_frame else tf.shape(image)[1]
        logits, weights, new_states = [], [], {self.COUNT: states[self.COUNT] + frames}
        for k, member in enumerate(self.members):
            if one_frame:
                # The exported step: static shapes, which TF Lite's kernels need inside a branch.
                picked, turn = image, tf.equal(tf.math.floormod(seen - k, count), 0)
            else:
                first = tf.math.floormod(k - seen, count)              # the chunk's first frame for member k
                picked = tf.gather(image, tf.range(first, frames, count), axis=1)
                turn = tf.shape(picked)[1] > 0
            before = self.member_states(k, states)
            last = tf.cast(before.pop(self.LOGITS), tf.float32)

            def run(member=member, picked=picked, before=before):
                return member({**before, "image": picked}, training=training)

            def skip(before=before, last=last):
                return last, before

            member_logits, after = tf.cond(turn, run, skip)
            logits.append(member_logits)
            new_states.update(self.prefixed(k, {**after, self.LOGITS: member_logits}))
            frames_seen = (seen + frames - k + count - 1) // count
            weights.append(tf.cast(frames_seen > 0, tf.float32))
        total = tf.add_n([w * l for w, l in zip(weights, logits)])
        return total / tf.maximum(tf.add_n(weights), 1.0), new_states
