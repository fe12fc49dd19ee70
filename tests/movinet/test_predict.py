"""``movinet predict``: real video files in, top-k per frame out, one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
import movinet
from movinet import checkpoints, predict
from tests.helpers import CODECS, RESOLUTION, TINY_SPEC, clips, random_model, write_video

ROOT = Path(__file__).resolve().parents[2]


def motion_video(path: Path, frames: int = 16, fps: int = 10) -> Path:
    return write_video(path, (clips(1, frames=frames)[0] * 255).astype(np.uint8), fps)


def run_cli(capsys, *argv):
    """(exit status, stdout lines, stderr lines) of ``movinet ARGV``."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out.splitlines(), [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Stream and base models with visible weights, saved as checkpoint directories."""
    root = tmp_path_factory.mktemp("models")
    return {mode: checkpoints.save(random_model(TINY_SPEC, mode), root / mode) for mode in ("stream", "base")}


@pytest.mark.parametrize("suffix", list(CODECS))
def test_read_video_in_every_container(tmp_path, suffix):
    levels = np.arange(10, dtype=np.uint8) * 20
    frames = np.broadcast_to(levels[:, None, None, None], (10, 24, 32, 3)).copy()
    video = predict.read_video(write_video(tmp_path / f"grey{suffix}", frames, fps=10), resolution=16)
    assert video.shape == (10, 16, 16, 3) and video.dtype == np.float32
    np.testing.assert_allclose(video.mean(axis=(1, 2, 3)), levels / 255.0, atol=0.03)


def test_read_video_resamples_resizes_and_centre_crops(tmp_path):
    frames = np.zeros((20, 48, 96, 3), np.uint8)
    frames[:, :, :24, 0] = frames[:, :, 24:72, 1] = frames[:, :, 72:, 2] = 255   # red | green | blue
    video = predict.read_video(write_video(tmp_path / "bands.mp4", frames, fps=10), resolution=32, fps=5)
    assert video.shape == (10, 32, 32, 3)
    green = video[..., 1].mean()
    assert green > 0.9 and video[..., 0].mean() < 0.1 and video[..., 2].mean() < 0.1


def test_read_labels(tmp_path):
    (tmp_path / "labels.txt").write_text("run\njump\nwalk\n\n")
    assert predict.read_labels(tmp_path / "labels.txt", 3) == ["run", "jump", "walk"]
    with pytest.raises(predict.LabelError, match="3 class names for a model with 5 classes"):
        predict.read_labels(tmp_path / "labels.txt", 5)
    (tmp_path / "gap.txt").write_text("run\n\nwalk\n")
    with pytest.raises(predict.LabelError, match="gap.txt:2: blank class name"):
        predict.read_labels(tmp_path / "gap.txt")


@pytest.mark.parametrize("mode, flags", [("stream", []), ("stream", ["--xla"]), ("base", [])])
def test_predict_cli_ends_on_the_whole_clip_prediction(tmp_path, capsys, saved_models, mode, flags):
    video = motion_video(tmp_path / "motion.mp4")
    status, lines, _ = run_cli(capsys, "predict", video, "--model", saved_models[mode], "--fps", 5,
                               "--resolution", RESOLUTION, "--top-k", 3, "--json", *flags)
    assert status == 0
    results = [json.loads(line) for line in lines]
    frames = predict.read_video(video, resolution=RESOLUTION, fps=5)
    assert len(frames) == 8
    assert [r["frame"] for r in results] == (list(range(8)) if mode == "stream" else [7])
    assert results[-1]["time"] == pytest.approx(7 / 5)

    model = checkpoints.load_model(saved_models[mode])
    classes, probabilities = predict.top_k(model(frames[None]).numpy()[0], 3)
    final = results[-1]["top_k"]
    assert [c["class"] for c in final] == classes.tolist()
    np.testing.assert_allclose([c["probability"] for c in final], probabilities, atol=1e-5)


def test_predict_cli_prints_labels_per_frame(tmp_path, capsys, saved_models):
    video = motion_video(tmp_path / "motion.webm", frames=6)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class_{i}" for i in range(5)) + "\n")
    status, lines, _ = run_cli(capsys, "predict", video, "--model", saved_models["stream"], "--fps", 10,
                               "--resolution", RESOLUTION, "--labels", labels, "--top-k", 2)
    assert status == 0 and len(lines) == 6
    assert lines[0].startswith("frame    0 (  0.00 s): class_") and lines[0].count("class_") == 2


def test_predict_cli_pipeline_prints_the_predictions_of_the_whole_model(tmp_path, capsys, saved_models):
    video = motion_video(tmp_path / "motion.mp4", frames=6)
    argv = ["predict", video, "--model", saved_models["stream"], "--resolution", RESOLUTION, "--fps", 10, "--json"]
    status, whole, _ = run_cli(capsys, *argv)
    status_piped, piped, _ = run_cli(capsys, *argv, "--pipeline", 2)
    assert status == status_piped == 0 and len(piped) == len(whole) == 6
    for line, expected in zip(piped, whole):
        got, want = json.loads(line), json.loads(expected)
        assert got["frame"] == want["frame"] and [c["class"] for c in got["top_k"]] == [c["class"] for c in want["top_k"]]
        np.testing.assert_allclose([c["probability"] for c in got["top_k"]],
                                   [c["probability"] for c in want["top_k"]], atol=1e-6)


@pytest.mark.slow
def test_export_cli_tflite_then_predict_matches_keras(tmp_path, capsys, saved_models):
    tflite = tmp_path / "tiny.tflite"
    video = motion_video(tmp_path / "motion.mp4")
    status, lines, _ = run_cli(capsys, "export", saved_models["stream"], "--format", "tflite",
                               "--resolution", RESOLUTION, "--fps", 5, "--out", tflite, "--check", video)
    assert status == 0 and lines[0] == f"wrote {tflite}"
    assert lines[1].startswith("TF Lite (float32) vs Keras float32 on 1 videos: top-1 agreement 1.000")
    assert lines[2].startswith("per frame: Keras ") and lines[2].endswith(" ms")
    # only the int32 frame counter's ops stay outside XNNPACK
    assert lines[3].startswith("ops outside XNNPACK: ") and "CAST 1" in lines[3]
    assert not any(op in lines[3] for op in ("CONV", "FULLY_CONNECTED", "HARD_SWISH", "MUL", "POOL", "MEAN"))
    status, lines, _ = run_cli(capsys, "predict", video, "--model", tflite, "--fps", 5, "--json")
    assert status == 0 and len(lines) == 8
    status, _, errors = run_cli(capsys, "predict", video, "--model", tflite, "--fps", 5, "--pipeline", 2)
    assert status == 2 and len(errors) == 1 and "a TF Lite model runs whole" in errors[0]

    model = checkpoints.load_model(saved_models["stream"])
    keras = list(predict.predict_video(video, model, resolution=RESOLUTION, fps=5, k=5))
    for line, expected in zip(lines, keras):
        got = json.loads(line)["top_k"]
        assert [c["class"] for c in got] == list(expected.classes)
        np.testing.assert_allclose([c["probability"] for c in got], expected.probabilities, atol=1e-5)


def test_predict_cli_threads_sizes_tensorflows_pools(tmp_path, saved_models):
    """`--threads 1` in a fresh process (TensorFlow's pools are fixed once it runs)."""
    video = motion_video(tmp_path / "motion.mp4", frames=6)
    script = ("import sys, tensorflow as tf; from cli.main import main; status = main(sys.argv[1:]); "
              "print(status, tf.config.threading.get_intra_op_parallelism_threads(), "
              "tf.config.threading.get_inter_op_parallelism_threads())")
    argv = ["predict", video, "--model", saved_models["stream"], "--resolution", RESOLUTION, "--fps", 10,
            "--threads", 1]
    done = subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr[-2000:]
    assert lines[-1] == "0 1 1" and len(lines) == 7 and lines[0].startswith("frame    0 "), lines


def bad_video(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "missing.mp4"
    if kind == "empty":
        (tmp_path / "empty.mp4").write_bytes(b"")
        return tmp_path / "empty.mp4"
    if kind == "text":
        (tmp_path / "notes.mp4").write_text("these are notes, not a video\n" * 20)
        return tmp_path / "notes.mp4"
    if kind == "directory":
        return tmp_path
    whole = tmp_path / "whole.mp4"
    if kind == "faststart":   # the index at the front: the cut file still decodes some frames
        write_video(whole, (clips(1, frames=16)[0] * 255).astype(np.uint8), 10, {"movflags": "faststart"})
    data = (whole if kind == "faststart" else motion_video(whole)).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    return tmp_path / "truncated.mp4"


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "directory", "truncated", "faststart"])
def test_predict_cli_bad_video_is_a_one_line_error(tmp_path, capsys, saved_models, kind):
    video = bad_video(tmp_path, kind)
    status, lines, errors = run_cli(capsys, "predict", video, "--model", saved_models["stream"],
                                    "--resolution", RESOLUTION)
    assert status == 2 and lines == []
    assert len(errors) == 1 and errors[0].startswith("movinet predict: error: ") and video.name in errors[0]
    print(f"\n{kind}: {errors[0]}")


def test_predict_cli_other_bad_input_is_a_one_line_error(tmp_path, capsys, saved_models):
    video = motion_video(tmp_path / "motion.mp4", frames=4)
    (tmp_path / "labels.txt").write_text("a\nb\n")
    (tmp_path / "fake.tflite").write_bytes(b"\x00" * 64)
    cases = {"2 class names for a model with 5 classes": ["--labels", tmp_path / "labels.txt"],
             "not a runnable TF Lite model": ["--model", tmp_path / "fake.tflite"],
             "--threads 0: expected a positive number": ["--threads", 0],
             "--pipeline 0: expected a positive number of stages": ["--pipeline", 0],
             "a base model takes the clip at once": ["--model", saved_models["base"], "--pipeline", 2]}
    for message, extra in cases.items():
        argv = ["predict", video, "--model", saved_models["stream"], "--resolution", RESOLUTION, *extra]
        status, lines, errors = run_cli(capsys, *argv)
        assert status == 2 and len(errors) == 1 and message in errors[0], errors
    status, _, errors = run_cli(capsys, "export", saved_models["stream"], "--quantize", "int8",
                                "--out", tmp_path / "m.tflite", "--resolution", RESOLUTION)
    assert status == 2 and len(errors) == 1 and "--calibration" in errors[0]
    status, _, errors = run_cli(capsys, "export", saved_models["stream"], "--format", "tflite", "--threads", 0,
                                "--out", tmp_path / "m.tflite", "--resolution", RESOLUTION)
    assert status == 2 and len(errors) == 1 and "--threads 0: expected a positive number" in errors[0]
    assert not (tmp_path / "m.tflite").exists()


def test_predict_cli_model_that_is_no_model_is_named_with_what_model_takes(tmp_path, capsys):
    video = motion_video(tmp_path / "motion.mp4", frames=4)
    (tmp_path / "ok.csv").write_text("motion.mp4,left\n")
    (tmp_path / "binary.yaml").write_bytes(video.read_bytes())
    (tmp_path / "words.yaml").write_text("just words\n")
    expected = {video: f"{video}: not a model; expected {predict.MODEL_KINDS}",
                tmp_path / "ok.csv": f"{tmp_path / 'ok.csv'}: not a model; expected {predict.MODEL_KINDS}",
                tmp_path / "binary.yaml": f"{tmp_path / 'binary.yaml'}: not a text file, so not a spec YAML file",
                tmp_path / "words.yaml": f"{tmp_path / 'words.yaml'}: expected a mapping, got str"}
    for model, message in expected.items():
        status, lines, errors = run_cli(capsys, "predict", video, "--model", model, "--resolution", RESOLUTION)
        assert (status, lines, errors) == (2, [], [f"movinet predict: error: {message}"])


@pytest.mark.slow
def test_predict_cli_with_a_named_model_and_the_official_checkpoint(tmp_path, capsys):
    """``predict --model a0 --checkpoint``, against the official A0 stream weights loaded here and
    run frame by frame."""
    import tensorflow as tf

    from tests.helpers import FIXTURES

    official = FIXTURES / "official" / "a0_stream"
    video = motion_video(tmp_path / "motion.mp4", frames=4, fps=5)
    model = movinet.build_model("a0", "stream", num_classes=10)
    checkpoints.load_weights(model, official)
    frames = predict.read_video(video, resolution=64, fps=5)
    states, expected = model.init_states((1, 1, 64, 64, 3)), []
    for frame in frames:
        logits, states = model({**states, "image": frame[None, None]})
        expected.append(tf.nn.softmax(logits[0]).numpy())
    status, lines, _ = run_cli(capsys, "predict", video, "--model", "a0", "--checkpoint", official,
                               "--num-classes", 10, "--resolution", 64, "--fps", 5, "--top-k", 3, "--json")
    assert status == 0 and len(lines) == len(frames) == 4
    for line, probabilities in zip(lines, expected):
        top = json.loads(line)["top_k"]
        order = np.argsort(-probabilities)[:3]
        assert [c["class"] for c in top] == order.tolist()
        # printed to 6 decimals
        np.testing.assert_allclose([c["probability"] for c in top], probabilities[order], atol=1.5e-6)


def image_quantization(path: Path) -> tuple[float, int]:
    """(scale, zero point) that a TF Lite model quantizes its float ``image`` input with."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    (image,) = [t["index"] for t in interpreter.get_input_details() if "image" in t["name"]]
    (quantize,) = [op for op in interpreter._get_ops_details() if image in op["inputs"]]
    assert quantize["op_name"] == "QUANTIZE"
    return tensors[quantize["outputs"][0]]["quantization"]


@pytest.mark.slow
def test_export_cli_int8_calibrates_on_the_videos_it_is_given(tmp_path, capsys):
    """`export --quantize int8 --calibration VIDEO ...` writes an int8 model whose input range is the
    calibration videos' (bright ones: about [0, 1]; the same at a quarter of the brightness: about [0, 0.3]);
    a missing calibration video is one error line, exit status 2, and no model."""
    import tensorflow as tf

    from movinet.data.synthetic import synthetic_motion
    from tests.helpers import FIXTURES

    videos = synthetic_motion(2, 8, 32, split="train")[0]
    scales = {}
    for brightness in (1.0, 0.25):
        paths = [write_video(tmp_path / f"{brightness}_{i}.mp4", (v * brightness * 255).round().astype(np.uint8), 5)
                 for i, v in enumerate(videos)]
        out = tmp_path / f"{brightness}.tflite"
        status, lines, _ = run_cli(capsys, "export", FIXTURES / "motion_stream", "--quantize", "int8",
                                   "--calibration", *paths, "--resolution", 32, "--fps", 5, "--out", out)
        assert status == 0 and lines[-1] == f"wrote {out}"
        types = [np.dtype(t["dtype"]) for t in tf.lite.Interpreter(model_path=str(out)).get_tensor_details()]
        assert types.count(np.int8) > len(types) / 2       # weights and activations (measured: 177 of 265)
        scales[brightness], zero_point = image_quantization(out)
        assert zero_point == -128                             # the darkest pixel, 0, is the lowest level
        # an int8 range from 0 to the calibration videos' brightest decoded value (the codec's
        # overshoot lifts it above what was written: 0.31 for 0.24)
        brightest = max(predict.read_video(p, resolution=32, fps=5).max() for p in paths)
        assert scales[brightness] == pytest.approx(brightest / 255, rel=0.01)
    missing = tmp_path / "missing.mp4"
    status, lines, errors = run_cli(capsys, "export", FIXTURES / "motion_stream", "--quantize", "int8",
                                    "--calibration", paths[0], missing, "--resolution", 32, "--fps", 5,
                                    "--out", tmp_path / "m.tflite")
    assert (status, lines, errors) == (2, [], [f"movinet export: error: {missing}: no such video file"])
    assert not (tmp_path / "m.tflite").exists()


def test_export_cli_saved_model_streams_the_keras_models_logits(tmp_path, capsys, saved_models):
    import tensorflow as tf

    status, lines, _ = run_cli(capsys, "export", saved_models["stream"], "--format", "saved_model",
                               "--resolution", RESOLUTION, "--out", tmp_path / "saved")
    assert status == 0
    model = checkpoints.load_model(saved_models["stream"])
    clip = clips(1, frames=3)
    saved = tf.saved_model.load(str(tmp_path / "saved"))
    states = saved.signatures["init_states"](input_shape=tf.constant(clip[:, :1].shape, tf.int32))
    for t in range(3):
        outputs = saved.signatures["call"](image=tf.constant(clip[:, t:t + 1]), **states)
        logits = outputs.pop("logits").numpy()
        states = outputs
    np.testing.assert_allclose(logits, model(clip).numpy(), atol=1e-5)
