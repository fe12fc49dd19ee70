"""Helpers shared by the tests: fixture paths, weight randomization, small random models and clips, videos."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import keras
import numpy as np

import movinet
from movinet.data.synthetic import synthetic_motion
from movinet.spec import spec_from_dict

FIXTURES = Path(__file__).parent / "fixtures"


def randomize_weights(model, seed: int = 0):
    """Gives every path of a model a visible effect: BN statistics, ReZero and PE scales nonzero.

    The kernels keep their He initialisation (scaled) so that activations stay O(1).
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        path = variable.path
        shape = tuple(variable.shape)
        if path.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, shape)
        elif path.endswith(("rezero", "scale")):
            value = rng.uniform(0.3, 0.8, shape)
        elif "kernel" in path:
            value = variable.numpy() * 0.7
        else:
            value = rng.normal(0.0, 0.1, shape)
        variable.assign(value.astype("float32"))
    return model


CODECS = {".mp4": ("mpeg4", "yuv420p"), ".avi": ("mjpeg", "yuvj420p"), ".webm": ("libvpx", "yuv420p"),
          ".mkv": ("ffv1", "yuv420p")}


def write_video(path: Path, frames: np.ndarray, fps: int = 25, options: dict | None = None) -> Path:
    """Encodes uint8 frames [T, H, W, 3] with PyAV, the codec chosen by the file extension;
    ``options``: the muxer's, e.g. {"movflags": "faststart"} (an mp4 index at the front)."""
    codec, pixel_format = CODECS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pixel_format
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


# Small stream models for export and prediction tests.
RESOLUTION = 64
NUM_CLASSES = 5

# Two blocks, a 3- and a 5-frame temporal kernel, a stride-1 layer: every state kind, converted in seconds.
TINY_SPEC = spec_from_dict({
    "name": "tiny", "stem": {"filters": 8},
    "blocks": [{"filters": 16, "layers": [{"expand": 32, "kernel": [3, 3, 3], "stride": [1, 2, 2]},
                                          {"expand": 32, "kernel": [1, 3, 3]}]},
               {"filters": 24, "layers": [{"expand": 48, "kernel": [5, 3, 3], "stride": [1, 2, 2]}]}],
    "head": {"project_filters": 48, "head_filters": 64},
    "input": {"frames": 8, "resolution": RESOLUTION, "fps": 5}})


def clips(count, split="test", frames=8):
    return synthetic_motion(count, frames, RESOLUTION, NUM_CLASSES, split=split)[0]


def unit_logits(model, videos):
    """Scales the last layer so that logits have unit spread, the size a trained classifier gives.

    Tolerances on logits then mean the same as for a trained model (the random classifier's
    logits are about 0.1).
    """
    layer = model.classifier.classifier
    scale = 1.0 / model(videos).numpy().std()
    layer.kernel.assign(layer.kernel.numpy() * scale)
    layer.bias.assign(layer.bias.numpy() * scale)
    return model


def clip_dependent_logits(model, videos):
    """Rescales the last layer so that each logit varies by about 1 between ``videos``.

    A random network's logits barely depend on the clip, so every clip would get the same
    top-1 class and a test of per-clip decisions would say nothing; after this the top-1 class
    follows the clip.
    """
    layer = model.classifier.classifier
    logits = model(videos).numpy() - layer.bias.numpy()
    scale = 1.0 / np.maximum(logits.std(axis=0), 1e-6)
    layer.kernel.assign(layer.kernel.numpy() * scale)
    layer.bias.assign(-logits.mean(axis=0) * scale)
    return model


def keras_frame_logits(model, clip):
    """Logits after each frame of ``clip`` [T, H, W, 3], the Keras stream model called on one frame at a time."""
    states, logits = model.init_states((1, 1, *clip.shape[1:])), []
    for frame in clip:
        step, states = model({**states, "image": frame[None, None]})
        logits.append(step.numpy()[0])
    return np.stack(logits)


def random_model(spec, mode="stream", scaling=unit_logits, seed=0, **options):
    keras.utils.set_random_seed(seed)   # the kernels too, so every run tests the same model
    model = randomize_weights(movinet.build_model(spec, mode, num_classes=NUM_CLASSES, **options), seed)
    return scaling(model, clips(6, split="train"))


def resized_frame_by_frame(video, size):
    """Each frame of a [B, T, H, W, 3] video through tf.image.resize on its own (bilinear): what
    a member of a resolution ensemble should see."""
    import tensorflow as tf

    video = np.asarray(video)
    return np.stack([np.stack([tf.image.resize(frame, [size, size]).numpy() for frame in clip]) for clip in video])


PROJECT_PACKAGES = ("movinet", "search", "family", "cli")

# Run with -I (no working folder, PYTHONPATH or user site on the path) and the project's packages
# refused: `import movinet` raises ImportError however the project is installed (an editable
# install's path hook too), while the test's own site-packages stay (a .venv in the checkout too).
RELOAD = textwrap.dedent("""
    import sys
    sys.modules.update(dict.fromkeys({packages!r}))
    try:
        import movinet
        raise AssertionError("movinet must not be importable here")
    except ImportError:
        pass
    import numpy as np
    import tensorflow as tf
    assert tf.__file__ == {tensorflow!r}, f"TensorFlow from {{tf.__file__}}, not from the test's environment"

    frames = np.load("frames.npy")
    for name, (path, stream) in {jobs!r}.items():
        model = tf.saved_model.load(path)
        if not stream:
            logits = model.signatures["serving_default"](image=tf.constant(frames[None]))["logits"].numpy()[0]
        else:
            shape = tf.constant([1, 1, *frames.shape[1:]], tf.int32)
            states, logits = model.signatures["init_states"](input_shape=shape), []
            for frame in frames:
                outputs = model.signatures["call"](image=tf.constant(frame[None, None]), **states)
                logits.append(outputs.pop("logits").numpy()[0])
                states = outputs
        np.save(name + ".npy", np.stack(logits))
""")


def saved_model_logits(models: dict, frames: np.ndarray, workdir: Path) -> dict:
    """{name: logits} of SavedModels run in a Python process where this project cannot be imported.

    Args:
      models: {name: (SavedModel directory, stream?)}; a stream model gives the logits after each
        frame (states from its ``init_states`` signature), a base model those of the whole clip.
    """
    np.save(workdir / "frames.npy", frames)
    jobs = {name: (str(path), stream) for name, (path, stream) in models.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    import tensorflow as tf

    script = RELOAD.format(packages=PROJECT_PACKAGES, tensorflow=tf.__file__, jobs=jobs)
    subprocess.run([sys.executable, "-I", "-c", script], cwd=workdir, env=env, check=True, timeout=300)
    return {name: np.load(workdir / f"{name}.npy") for name in models}
