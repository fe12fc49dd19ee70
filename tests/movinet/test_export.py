"""SavedModel and TF Lite export: numerics against the Keras model, by name, frame by frame."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import movinet
from movinet import checkpoints, export, runners
from movinet.data.synthetic import synthetic_motion
from tests.helpers import (FIXTURES, NUM_CLASSES, RESOLUTION, TINY_SPEC, clip_dependent_logits, clips, random_model,
                           saved_model_logits)

# A small stream model trained on the synthetic motion set (tests/fixtures/make_motion_stream.py).
MOTION_MODEL = FIXTURES / "motion_stream"


def frame_logits(model, clip):
    """Logits after every frame of ``clip``, streamed by a Keras stream model or a TF Lite runner."""
    return np.stack([logits for _, logits in runners.running_logits(model, clip)])


def test_state_specs_leave_dynamic_sizes_open():
    model = movinet.build_model(TINY_SPEC, "stream", num_classes=NUM_CLASSES)
    fixed = export.state_specs(model, 1, 64, 48)
    assert fixed["state_block1_layer0_stream_buffer"].shape == (1, 4, 8, 6, 48)
    dynamic = export.state_specs(model, None, None, None)
    assert dynamic["state_block1_layer0_stream_buffer"].shape.as_list() == [None, 4, None, None, 48]
    assert dynamic["state_head_pool_buffer"].shape.as_list() == [None, 1, 1, 1, 48]
    assert dynamic["state_head_pool_frame_count"].shape.as_list() == [1]
    assert set(fixed) == set(model.state_shapes((1, 1, 64, 48, 3)))


def test_export_tflite_rejects_bad_settings(tmp_path):
    model = movinet.build_model(TINY_SPEC, "stream", num_classes=NUM_CLASSES)
    with pytest.raises(runners.ExportError, match="quantization='int4'"):
        export.export_tflite(model, tmp_path / "m.tflite", resolution=64, quantization="int4")
    with pytest.raises(runners.ExportError, match="calibration"):
        export.export_tflite(model, tmp_path / "m.tflite", resolution=64, quantization="int8")
    with pytest.raises(runners.ExportError, match="fixed resolution"):
        export.export_tflite(model, tmp_path / "m.tflite", resolution=None)
    with pytest.raises(runners.ExportError, match="states='both': expected one of"):
        export.export_tflite(model, tmp_path / "m.tflite", resolution=64, states="both")


def test_an_op_outside_the_builtins_fails_the_conversion():
    pool = tf.function(lambda x: {"y": tf.nn.avg_pool3d(x, 2, 2, "VALID")})
    function = pool.get_concrete_function(tf.TensorSpec([1, 4, 8, 8, 3], tf.float32, name="x"))
    with pytest.raises(runners.ExportError, match="TF Select ops: AvgPool3D"):
        export.convert(function, tf.Module())


def test_tflite_runner_rejects_a_file_that_is_not_tflite(tmp_path):
    with pytest.raises(FileNotFoundError):
        runners.TFLiteStreamRunner(tmp_path / "missing.tflite")
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(runners.ExportError, match="junk.tflite"):
        runners.TFLiteStreamRunner(tmp_path / "junk.tflite")


def test_keras_stream_runner_carries_its_states_between_frames():
    model = random_model(TINY_SPEC)
    clip = clips(1)[0]
    runner = runners.KerasStreamRunner(model, RESOLUTION)
    first = np.stack([runner.step(frame) for frame in clip])
    np.testing.assert_allclose(first[-1], model(clip[None]).numpy()[0], atol=1e-4)
    # The states it reports are the model's own after those frames, and later steps leave them be.
    _, expected = model({**model.init_states(clip[None].shape), "image": clip[None]})
    snapshot = runner.states
    runner.step(clip[0])
    for name, value in expected.items():
        np.testing.assert_allclose(snapshot[name].numpy(), value.numpy(), atol=1e-5, err_msg=name)
    # init_states is the start of a new video: the same clip gives the same logits again.
    zeros = runner.init_states()
    assert all(not np.any(value.numpy()) for value in zeros.values())
    np.testing.assert_allclose(np.stack([runner.step(frame) for frame in clip]), first, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"conv_type": "3d"}])
def test_xla_compiled_stream_runner_matches_the_plain_one(options):
    model = random_model(TINY_SPEC, **options)
    clip = clips(1)[0]
    plain = runners.KerasStreamRunner(model, RESOLUTION)
    compiled = runners.KerasStreamRunner(model, RESOLUTION, jit_compile=True)
    # The compiled step holds no depthwise convolution op, which XLA runs slowly on CPU.
    assert "DepthwiseConv2dNative" not in {op.type for op in compiled._step.graph.get_operations()}
    expected = np.stack([plain.step(frame) for frame in clip])
    np.testing.assert_allclose(np.stack([compiled.step(frame) for frame in clip]), expected, atol=1e-4)
    np.testing.assert_allclose(expected[-1], model(clip[None]).numpy()[0], atol=1e-4)


def test_xla_function_of_a_folded_base_model_gives_its_logits():
    model = random_model(TINY_SPEC, "base")
    clip = tf.constant(clips(1)[0][None])
    folded = movinet.fold_batch_norm(model)
    compiled = runners.xla_function(lambda x: folded(x, training=False), clip)
    assert "DepthwiseConv2dNative" not in {op.type for op in compiled.graph.get_operations()}
    np.testing.assert_allclose(compiled(clip).numpy(), model(clip).numpy(), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("spec, states", [("a0", "inside"), (TINY_SPEC, "outside")])
def test_tflite_float32_stream_matches_keras_frame_by_frame(tmp_path, spec, states):
    """Each clip starts from zero states: a file that keeps its states must reset them in
    ``init_states`` (the second clip follows the first in the same interpreter)."""
    model = random_model(spec, scaling=clip_dependent_logits)
    path = export.export_tflite(model, tmp_path / "a0.tflite", resolution=RESOLUTION, states=states)
    runner = runners.TFLiteStreamRunner(path)
    assert runner.streaming and runner.image_shape == (1, 1, RESOLUTION, RESOLUTION, 3)
    if states == "inside":
        assert runner.keeps_states and set(runner.inputs) == {"image"} and set(runner.outputs) == {"logits"}
    else:
        assert set(runner.state_names) == set(model.state_shapes((1, 1, RESOLUTION, RESOLUTION, 3)))
    gaps = []
    for clip in clips(2):
        expected = frame_logits(model, clip)
        gaps.append(np.abs(frame_logits(runner, clip) - expected).max())
        np.testing.assert_allclose(expected[-1], model(clip[None]).numpy()[0], atol=1e-4)
    print(f"\n{model.name} TF Lite float32 (states {states}) vs Keras, per frame: max |diff| {max(gaps):.2e}")
    assert max(gaps) < 1e-4


def test_a_file_that_keeps_its_states_stores_no_copy_of_them(tmp_path):
    """The converter stores each variable's initial value in full; the file makes its zero states
    with FILL ops instead, which start a video even before any ``init_states`` call."""
    from ai_edge_litert.interpreter import Interpreter

    model = random_model(TINY_SPEC, scaling=clip_dependent_logits)
    inside = export.export_tflite(model, tmp_path / "inside.tflite", resolution=RESOLUTION)
    outside = export.export_tflite(model, tmp_path / "outside.tflite", resolution=RESOLUTION, states="outside")
    state_bytes = sum(int(np.prod(spec.shape)) * spec.dtype.size
                      for spec in export.state_specs(model, 1, RESOLUTION, RESOLUTION).values())
    growth = inside.stat().st_size - outside.stat().st_size
    assert growth < state_bytes / 4, (growth, state_bytes)     # measured: 5 KB of 115 KB; stored: 119 KB
    clip = clips(1)[0]
    call = Interpreter(model_path=str(inside)).get_signature_runner("call")
    first = [call(image=frame[None, None])["logits"][0] for frame in clip[:2]]
    np.testing.assert_allclose(first, frame_logits(model, clip)[:2], atol=1e-4)


@pytest.mark.slow
def test_tflite_float16_matches_keras_frame_by_frame(tmp_path):
    model = random_model(TINY_SPEC)
    path = export.export_tflite(model, tmp_path / "f16.tflite", resolution=RESOLUTION, quantization="float16")
    runner = runners.TFLiteStreamRunner(path)
    gap = max(np.abs(frame_logits(runner, clip) - frame_logits(model, clip)).max() for clip in clips(2))
    print(f"\nfloat16 TF Lite vs Keras float32, per frame: max |diff| {gap:.2e}")
    assert gap < 1e-2


def stream_logits(runner, clip):
    """Logits after each frame of ``clip``, states carried from zero (Keras or TF Lite runner)."""
    runner.init_states()
    return np.stack([runner.step(frame) for frame in clip])


@pytest.mark.slow
@pytest.mark.parametrize("states", ["inside", "outside"])
def test_int8_export_of_a_trained_stream_model_keeps_its_decisions_frame_by_frame(tmp_path, states):
    """int8 calibrated on 8-frame clips streamed with their carried states, tested on held-out
    streams 4x as long. Calibrating on zero states instead scores ~0.99 agreement too (the trained
    model is sure of itself), but its logits miss by 0.2-0.5 of their spread, which the second
    assertion catches."""
    model = checkpoints.load_model(MOTION_MODEL)
    calibration = synthetic_motion(8, 8, 32, split="train")[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export.export_tflite(model, tmp_path / "int8.tflite", resolution=32, quantization="int8",
                                    calibration=calibration, states=states)
        runner = runners.TFLiteStreamRunner(path)
    # the converter's calibration builds a deprecated tf.lite.Interpreter; its warning stays inside
    assert not [w for w in caught if "tf.lite.Interpreter is deprecated" in str(w.message)]
    videos, labels = synthetic_motion(16, 32, 32, split="test")
    keras_runner = runners.KerasStreamRunner(model, 32)
    expected = np.stack([stream_logits(keras_runner, video) for video in videos])
    got = np.stack([stream_logits(runner, video) for video in videos])
    assert (expected[:, 7].argmax(-1) == labels).mean() >= 0.9      # the fixture is trained
    spread = expected.std()
    for frames in (slice(0, 8), slice(8, 32)):                        # calibration length, then beyond
        agreement = (got[:, frames].argmax(-1) == expected[:, frames].argmax(-1)).mean()
        error = np.abs(got[:, frames] - expected[:, frames]).mean() / spread
        print(f"\nint8 (states {states}) vs float32, frames {frames.start}-{frames.stop - 1} of {len(videos)} held-out streams: "
              f"top-1 agreement per frame {agreement:.3f}, mean |logit diff| {error:.3f} of the logit spread")
        assert agreement >= 0.97            # measured: inside 0.984 and 1.000, outside 0.977 and 1.000
        assert error <= 0.15


@pytest.mark.slow
def test_tflite_base_model_on_a_fixed_clip(tmp_path):
    model = random_model(TINY_SPEC, "base")
    path = export.export_tflite(model, tmp_path / "base.tflite", resolution=RESOLUTION, frames=8)
    runner = runners.TFLiteStreamRunner(path)
    assert not runner.streaming and runner.image_shape == (1, 8, RESOLUTION, RESOLUTION, 3)
    clip = clips(1)[0]
    np.testing.assert_allclose(runner.step(clip), model(clip[None]).numpy()[0], atol=1e-4)

    longer = clips(1, frames=12)[0]
    padded = np.concatenate([longer[8:], np.repeat(longer[-1:], 4, axis=0)])
    windows = [model(window[None]).numpy()[0] for window in (longer[:8], padded)]
    steps = list(runners.running_logits(runner, longer))
    assert [index for index, _ in steps] == [7, 11]
    np.testing.assert_allclose(steps[-1][1], np.mean(windows, axis=0), atol=1e-4)


@pytest.mark.slow
def test_saved_model_streams_in_a_process_without_the_project(tmp_path):
    """The SavedModel's ``call`` returns every new state, which fed back frame after frame gives
    the Keras stream model's logits; its logits follow the frames seen, so that a state left out
    or not carried moves them by 5e-3 or more (measured), 50 times the tolerance."""
    from movinet.predict import read_video
    from tests.helpers import write_video

    stream = random_model(TINY_SPEC, scaling=clip_dependent_logits)
    base = random_model(TINY_SPEC, "base")
    export.export_saved_model(stream, tmp_path / "stream", resolution=None)
    export.export_saved_model(base, tmp_path / "base", frames=None, resolution=None, batch=None)
    video = write_video(tmp_path / "clip.mp4", (clips(1, frames=10)[0] * 255).astype(np.uint8), fps=5)
    frames = read_video(video, resolution=48, fps=5)
    reloaded = saved_model_logits({"stream": (tmp_path / "stream", True), "base": (tmp_path / "base", False)},
                                  frames, tmp_path)

    gap = np.abs(reloaded["stream"] - frame_logits(stream, frames)).max()
    print(f"\nreloaded stream SavedModel vs Keras, per frame at 48x48: max |diff| {gap:.2e}")
    assert gap < 1e-4
    np.testing.assert_allclose(reloaded["base"], base(frames[None]).numpy()[0], atol=1e-4)
