"""Helpers shared by the tests: fixture paths and weight randomization."""

from pathlib import Path

import av
import numpy as np

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


def write_video(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """Encodes uint8 frames [T, H, W, 3] with PyAV, the codec chosen by the file extension."""
    codec, pixel_format = CODECS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pixel_format
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path
