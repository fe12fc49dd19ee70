"""Checkpoints: official fixtures reproduce the official logits; the loader is structural and strict."""

import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest

import movinet
from movinet.checkpoints import CheckpointError, load_model, load_weights, save, save_official
from tests.helpers import FIXTURES, TINY_SPEC, randomize_weights

OFFICIAL = FIXTURES / "official"


def build_from_meta(meta, **changes):
    settings = dict(conv_type=meta["conv_type"], se_type=meta["se_type"], activation=meta["activation"],
                    gating_activation=meta["gating_activation"], num_classes=meta["num_classes"],
                    use_positional_encoding=meta["use_positional_encoding"],
                    classifier_activation=meta["classifier_activation"])
    settings.update(changes)
    return movinet.build_model(meta["model_id"], "stream" if meta["causal"] else "base", **settings)


@pytest.mark.parametrize("fixture", ["a0_base", "a0_stream"])
def test_official_checkpoint_reproduces_official_logits(fixture):
    meta = json.loads((OFFICIAL / fixture / "meta.json").read_text())
    io = np.load(OFFICIAL / fixture / "io.npz")
    model = build_from_meta(meta)
    assert model.count_params() == meta["n_params"]
    load_weights(model, OFFICIAL / fixture)
    # The README's 1e-6: measured 2.4e-7 (base) and 3.9e-7 (stream), 7.7e-7 frame by frame.
    np.testing.assert_allclose(model(io["video"]).numpy(), io["logits"], rtol=0, atol=1e-6)
    if "per_frame_logits" in io:
        states = model.init_states(io["video"].shape)
        per_frame = []
        for t in range(io["video"].shape[1]):
            logits, states = model({**states, "image": io["video"][:, t:t + 1]})
            per_frame.append(logits.numpy())
        np.testing.assert_allclose(np.stack(per_frame, axis=1), io["per_frame_logits"], rtol=0, atol=1e-6)


def test_tar_gz_and_prefix_paths_load(tmp_path):
    archive = tmp_path / "movinet_a0_base.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in (OFFICIAL / "a0_base").iterdir():
            if item.name != "io.npz":
                tar.add(item, arcname=f"movinet_a0_base/{item.name}")
    meta = json.loads((OFFICIAL / "a0_base" / "meta.json").read_text())
    io = np.load(OFFICIAL / "a0_base" / "io.npz")
    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("movinet_ckpt_*"))
    for path in (archive, OFFICIAL / "a0_base" / "ckpt-1"):
        model = build_from_meta(meta)
        result = load_weights(model, path)
        np.testing.assert_allclose(model(io["video"]).numpy(), io["logits"], rtol=0, atol=1e-6)
        assert result["checkpoint"].startswith(str(path))
    assert set(temp.glob("movinet_ckpt_*")) == before      # the extracted archive is gone


def test_wrong_model_id_lists_the_mismatch_and_assigns_nothing():
    model = movinet.build_model("t0", "base", num_classes=10)
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(CheckpointError) as err:
        load_weights(model, OFFICIAL / "a0_base")
    message = str(err.value)
    assert "does not fit t0" in message and "wrong shape" in message
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights))


def test_wrong_number_of_classes_and_fresh_head_for_fine_tuning():
    meta = json.loads((OFFICIAL / "a0_stream" / "meta.json").read_text())
    model = build_from_meta(meta, num_classes=3)
    with pytest.raises(CheckpointError, match="_classifier/_conv/kernel: checkpoint"):
        load_weights(model, OFFICIAL / "a0_stream")
    head_before = model.classifier.classifier.kernel.numpy().copy()
    load_weights(model, OFFICIAL / "a0_stream", skip_classifier=True)
    np.testing.assert_array_equal(model.classifier.classifier.kernel.numpy(), head_before)
    assert model(np.zeros([1, 2, 32, 32, 3], np.float32)).shape == (1, 3)


def test_base_checkpoint_into_stream_model_names_missing_temporal_weights():
    model = movinet.build_model("a0", "stream", num_classes=10)
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(model, OFFICIAL / "a0_base")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    model = movinet.build_model("t0", "base", num_classes=2)
    with pytest.raises(CheckpointError, match="not a readable checkpoint archive"):
        load_weights(model, tmp_path / "junk.tar.gz")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_weights(model, tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint"):
        load_weights(model, tmp_path)


@pytest.mark.parametrize("name, mode, options", [
    ("a1", "stream", dict(use_positional_encoding=True)),
    ("t0", "base", {}),
    ("a0", "stream", dict(conv_type="3d", se_type="3d")),
    ("a2", "stream", dict(se_type="2d")),
])
def test_official_layout_round_trip_for_other_models(tmp_path, name, mode, options):
    source = randomize_weights(movinet.build_model(name, mode, num_classes=6, **options), seed=21)
    save_official(source, tmp_path / "ckpt-1")
    target = movinet.build_model(name, mode, num_classes=6, **options)
    load_weights(target, tmp_path)
    clip = np.random.default_rng(22).random((1, 3, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(target(clip).numpy(), source(clip).numpy(), atol=1e-5)


def test_3d_2plus1d_checkpoint_converts_to_2plus1d(tmp_path):
    """Training layout (Conv3D (1,3,3) + (k,1,1)) loads into the (2+1)D inference graph."""
    trained = randomize_weights(movinet.build_model("a0", "stream", num_classes=4, conv_type="3d_2plus1d"), seed=23)
    save_official(trained, tmp_path / "ckpt-1")
    inference = movinet.build_model("a0", "stream", num_classes=4, conv_type="2plus1d")
    load_weights(inference, tmp_path)
    clip = np.random.default_rng(24).random((1, 3, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(inference(clip).numpy(), trained(clip).numpy(), atol=1e-5)


def test_own_checkpoint_rebuilds_its_model(tmp_path):
    model = randomize_weights(movinet.build_model("t0", "stream", num_classes=5, se_type="2d"), seed=25)
    save(model, tmp_path / "run")
    restored = load_model(tmp_path / "run")
    assert restored.options == model.options and restored.spec == model.spec
    clip = np.random.default_rng(26).random((1, 3, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(restored(clip).numpy(), model(clip).numpy(), atol=1e-6)


def test_tf_train_checkpoint_of_the_model_object_holds_every_variable(tmp_path):
    """TF-native checkpointing (tf.train.Checkpoint, SavedModel) must see the block layers."""
    import tensorflow as tf

    model = randomize_weights(movinet.build_model("t0", "stream", num_classes=3), seed=27)
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    saved = [k for k in tf.train.load_checkpoint(prefix).get_variable_to_shape_map() if "VARIABLE_VALUE" in k]
    assert len(saved) == len(model.weights)
    restored = movinet.build_model("t0", "stream", num_classes=3)
    tf.train.Checkpoint(model=restored).read(prefix).assert_existing_objects_matched()
    clip = np.random.default_rng(28).random((1, 3, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(restored(clip).numpy(), model(clip).numpy(), atol=1e-6)


@pytest.mark.slow
def test_a_training_runs_checkpoints_load_as_an_init_checkpoint(tmp_path):
    """``--init-checkpoint RUN/checkpoints``: a run's checkpoint names variables by their paths,
    not the official structure; its backbone loads, the classifier stays new, another model does not fit."""
    from movinet.data import DataConfig
    from movinet.runfolder import restore_run_model
    from movinet.train import TrainConfig, train

    data = DataConfig(frames=4, resolution=16, batch_size=4, train_clips=8, val_clips=4, parallel_calls=1)
    train(TINY_SPEC, "stream", data, TrainConfig(epochs=1, optimizer="adam", verbose=0), tmp_path / "run")
    trained, _ = restore_run_model(tmp_path / "run")
    fresh = movinet.build_model(TINY_SPEC, "stream", num_classes=7)
    classifier = fresh.classifier.classifier.kernel.numpy()
    assert load_weights(fresh, tmp_path / "run" / "checkpoints", skip_classifier=True)["loaded"] == len(
        fresh.weights) - len(fresh.classifier.weights)
    for name in ("stem", "block1_layer0", "head"):
        for ours, theirs in zip(getattr(fresh, name).weights, getattr(trained, name).weights, strict=True):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_array_equal(fresh.classifier.classifier.kernel.numpy(), classifier)
    with pytest.raises(CheckpointError, match=r"does not fit t0 \(stream.*\n  missing"):
        load_weights(movinet.build_model("t0", "stream", num_classes=7), tmp_path / "run" / "checkpoints",
                     skip_classifier=True)
