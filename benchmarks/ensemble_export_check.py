"""A named ensemble in stream mode exported to TF Lite and SavedModel, both streamed beside Keras.

    PYTHONPATH=. python benchmarks/ensemble_export_check.py [--name a6] [--frames 4] [--out results/export_check]

Random weights (the tests' ``randomize_weights``: every batch norm and scale nonzero); prints the largest per-frame logit gap of each
export to the Keras ensemble, and the conversion times and file size.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from family import registry
from movinet import export
from movinet.runners import TFLiteStreamRunner
from tests.helpers import keras_frame_logits, randomize_weights


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="a6")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--out", default="results/export_check")
    args = parser.parse_args()
    out = Path(args.out)
    model = randomize_weights(registry.build(args.name, "stream"), seed=0)
    size = model.video_input.resolution
    frames = np.random.default_rng(0).random((args.frames, size, size, 3), dtype=np.float32)
    expected = keras_frame_logits(model, frames)
    began = time.perf_counter()
    path = export.export_tflite(model, out / f"{args.name}_stream.tflite", resolution=size)
    print(f"TF Lite float32: {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - began:.0f} s")
    runner = TFLiteStreamRunner(path)
    gap = np.abs(np.stack([runner.step(frame) for frame in frames]) - expected).max()
    print(f"{args.name} stream, TF Lite float32 vs Keras, {args.frames} frames at {size}: max |logit diff| {gap:.1e} "
          f"(logits spread {expected.std():.2f})")
    saved = export.export_saved_model(model, out / f"{args.name}_stream_saved_model", resolution=None)
    loaded = tf.saved_model.load(str(saved))
    states = loaded.signatures["init_states"](input_shape=tf.constant([1, 1, size, size, 3]))
    logits = []
    for frame in frames:
        outputs = loaded.signatures["call"](image=tf.constant(frame[None, None]), **states)
        logits.append(outputs.pop("logits").numpy()[0])
        states = outputs
    print(f"{args.name} stream, SavedModel vs Keras: max |logit diff| {np.abs(np.stack(logits) - expected).max():.1e}")


if __name__ == "__main__":
    main()
