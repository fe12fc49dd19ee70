"""Ensembles as Keras models: mean of members, interleaving, streaming, config, errors."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import movinet
from family import EnsembleError, ResolutionEnsemble, TemporalEnsemble
from movinet.model import StateError
from tests.helpers import randomize_weights, resized_frame_by_frame

CLASSES = 3
CLIP = np.random.default_rng(0).random((1, 4, 32, 32, 3), dtype=np.float32)
MODES = ["base", "stream"]
KINDS = ["resolution", "temporal"]


@functools.cache
def ensembles(mode: str) -> dict:
    """A resolution ensemble of T0 (32 px) and A0 (40 px), a temporal one of two T0s; random weights."""
    t0, a0, t0_odd = (randomize_weights(movinet.build_model(name, mode, num_classes=CLASSES), seed=k)
                      for k, name in enumerate(["t0", "a0", "t0"]))
    return {"resolution": ResolutionEnsemble([t0, a0], ["t0", "a0"], resolutions=[32, 40]),
            "temporal": TemporalEnsemble([t0, t0_odd], ["even", "odd"])}


def stream(model, clip, lengths):
    states = model.init_states(clip.shape)
    start = 0
    for length in lengths:
        logits, states = model({**states, "image": clip[:, start:start + length]})
        start += length
    return logits.numpy(), states


@pytest.mark.parametrize("mode", MODES)
def test_resolution_ensemble_is_the_mean_of_its_members_at_their_resolutions(mode):
    model = ensembles(mode)["resolution"]
    first, second = model.members
    expected = (first(resized_frame_by_frame(CLIP, 32)) + second(resized_frame_by_frame(CLIP, 40))) / 2
    np.testing.assert_allclose(model(CLIP), expected, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_temporal_ensemble_is_the_mean_of_its_members_on_interleaved_frames(mode):
    model = ensembles(mode)["temporal"]
    even, odd = model.members
    expected = (even(CLIP[:, 0::2]) + odd(CLIP[:, 1::2])) / 2
    np.testing.assert_allclose(model(CLIP), expected, atol=1e-6)


@pytest.mark.parametrize("lengths", [[4], [1, 3], [1, 1, 1, 1]])
@pytest.mark.parametrize("kind", KINDS)
def test_streaming_in_chunks_equals_the_whole_clip(kind, lengths):
    model = ensembles("stream")[kind]
    logits, _ = stream(model, CLIP, lengths)
    np.testing.assert_allclose(logits, model(CLIP), atol=1e-5)


def test_temporal_stream_leaves_out_members_that_saw_no_frame_yet():
    model = ensembles("stream")["temporal"]
    logits, states = stream(model, CLIP, [1])
    np.testing.assert_allclose(logits, model.members[0](CLIP[:, :1]), atol=1e-6)
    assert int(states["frame_count"][0]) == 1


def test_states_of_all_members_travel_in_one_dict():
    model = ensembles("stream")["resolution"]
    states = model.init_states(CLIP.shape)
    expected = {}
    for name, member, size in zip(model.member_names, model.members, model.resolutions):
        expected.update({f"{name}/{state}": shape for state, (shape, _) in member.state_shapes([1, 4, size, size, 3]).items()})
    assert {name: tuple(value.shape) for name, value in states.items()} == expected
    _, new_states = stream(model, CLIP, [2])
    assert {k: v.shape for k, v in new_states.items()} == {k: v.shape for k, v in states.items()}
    with pytest.raises(StateError, match="missing"):
        model({"image": CLIP, **{k: v for k, v in states.items() if not k.startswith("a0/")}})
    with pytest.raises(StateError, match="base"):
        ensembles("base")["resolution"]({"image": CLIP, **states})


@pytest.mark.slow
def test_stream_ensemble_runs_as_a_tf_function():
    model = ensembles("stream")["temporal"]
    step = tf.function(model)
    states = model.init_states(CLIP.shape)
    for t in range(3):
        logits, states = step({**states, "image": CLIP[:, t:t + 1]})
    np.testing.assert_allclose(logits, model(CLIP[:, :3]), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip_rebuilds_the_same_ensemble(kind):
    model = ensembles("stream")[kind]
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert type(rebuilt) is type(model) and rebuilt.get_config() == model.get_config()
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_allclose(rebuilt(CLIP), model(CLIP), atol=1e-6)


def test_members_must_share_classes_and_mode():
    t0 = ensembles("base")["temporal"].members[0]
    with pytest.raises(EnsembleError, match="'k400' has 400 classes but member 't0' has 3"):
        ResolutionEnsemble([t0, movinet.build_model("t0", num_classes=400)], ["t0", "k400"], [32, 32])
    with pytest.raises(EnsembleError, match="stream model"):
        TemporalEnsemble([t0, ensembles("stream")["temporal"].members[0]], ["a", "b"])
    with pytest.raises(EnsembleError, match="distinct"):
        TemporalEnsemble([t0, t0], ["same", "same"])


def test_temporal_ensemble_needs_a_frame_per_member():
    with pytest.raises(ValueError, match="at least 2 frames"):
        ensembles("base")["temporal"](CLIP[:, :1])


@pytest.mark.slow
def test_base_ensemble_exports_as_a_saved_model_like_a_single_model(tmp_path):
    from movinet.export import export_saved_model

    model = ensembles("base")["resolution"]
    path = export_saved_model(model, tmp_path / "saved", frames=4, resolution=32)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](image=tf.constant(CLIP))
    np.testing.assert_allclose(served["logits"], model(CLIP), atol=1e-6)
