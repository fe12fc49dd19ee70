"""Runs one measurement on the official implementation, or writes its A0 stream TF Lite file
(``official_bench.py tflite OUT``); prints one JSON line.

Executed with the official environment's python by bench.py (it imports tf-models-official).
"""

import json
import sys
import time

import tensorflow as tf
from official.projects.movinet.modeling import movinet as official_movinet
from official.projects.movinet.modeling import movinet_model


def timed(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def build(causal, external_states=None):
    """A0 with 600 classes; stream models take external states unless training."""
    external_states = causal if external_states is None else external_states
    settings = dict(model_id="a0", causal=causal, use_external_states=external_states)
    if causal:
        settings.update(conv_type="2plus1d", se_type="2plus3d", activation="hard_swish",
                        gating_activation="hard_sigmoid")
    backbone = official_movinet.Movinet(**settings)
    return movinet_model.MovinetClassifier(backbone, num_classes=600, output_states=external_states)


def export_tflite(path):
    """The official A0 stream TF Lite file, made as the official README does: a SavedModel of
    one 172x172 frame without the bundled init_states, converted with the default settings."""
    import tempfile

    from official.projects.movinet.tools.export_saved_model import build_and_export_saved_model

    with tempfile.TemporaryDirectory() as folder:
        build_and_export_saved_model(export_path=folder, model_id="a0", causal=True, conv_type="2plus1d",
                                     se_type="2plus3d", activation="hard_swish", gating_activation="hard_sigmoid",
                                     use_positional_encoding=False, num_classes=600,
                                     input_shape=(1, 1, 172, 172, 3), bundle_input_init_states_fn=False)
        flatbuffer = tf.lite.TFLiteConverter.from_saved_model(folder).convert()
    with open(path, "wb") as handle:
        handle.write(flatbuffer)
    return {"path": path, "bytes": len(flatbuffer)}


def main(what, *args):
    if what == "tflite":
        return export_tflite(*args)
    if what == "stream":
        model = build(True)
        states = model.init_states(tf.constant([1, 1, 172, 172, 3]))
        frame = tf.random.uniform([1, 1, 172, 172, 3])
        step = tf.function(lambda s, f: model({**s, "image": f}))
        holder = {"states": states}

        def run():
            logits, holder["states"] = step(holder["states"], frame)
            logits.numpy()

        return {"ms": 1000 * timed(run, 60, warmup=5)}
    if what == "base":
        model = build(False)
        clip = tf.random.uniform([1, 50, 172, 172, 3])
        return {"s": timed(lambda: model(clip).numpy(), 2, warmup=1)}
    model = build(what == "train_stream", external_states=False)
    # The MoViNet recipe's RMSprop, as ours is timed.
    optimizer = tf.keras.optimizers.RMSprop(1e-3, rho=0.9, momentum=0.9, epsilon=1.0)
    clips = tf.random.uniform([8, 8, 172, 172, 3])
    labels = tf.zeros([8], tf.int32)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(clips, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    # Stream steps take ~1 s: time more of them, their rate moved 4-7 clips/s over 2 steps.
    repeats = 6 if what == "train_stream" else 2
    return {"clips_per_s": 8 / timed(lambda: train_step().numpy(), repeats, warmup=2)}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
