"""What a training run pays before and around its steps, each case in a fresh process.

    python benchmarks/start_bench.py [--only fit,trainer,trial]

- fit: a t0 stream model compiled with ``--optimizer`` (default "adam"), its first Keras ``fit``
  (2 steps of 4x32x32 clips, batch 2) and its second.
- trainer: ``movinet.train.Trainer`` on an A0 stream model, 8x172x172, batch 8, the default
  TrainConfig (clipnorm 1.0): tracing the step, its first run, then the median of 4 steps, with
  oneDNN as the environment says (``movinet train`` switches it on: TF_ENABLE_ONEDNN_OPTS=1).
- trial: the first candidate of ``specs/spaces/demo.yaml``, its training step on one thread
  (as a search trial runs it), median of 20 steps, with oneDNN as the environment says.

Each prints one line of seconds (ms for the trial step). Run the cases a few times, alternating
with the code being compared: on a 2-core host a step varies ~10% between processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CASES = ("fit", "trainer", "trial")


def fit(optimizer: str) -> str:
    import keras
    import numpy as np

    import movinet

    model = movinet.build_model("t0", "stream", num_classes=3)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clips = np.random.default_rng(13).random((4, 4, 32, 32, 3), dtype=np.float32)
    labels = np.array([0, 1, 2, 0])
    times = []
    for _ in range(2):
        began = time.perf_counter()
        model.fit(clips, labels, epochs=1, batch_size=2, verbose=0)
        times.append(time.perf_counter() - began)
    return (f"t0 stream, compile(optimizer={optimizer!r}) -> {type(model.optimizer).__name__}: "
            f"first fit {times[0]:.2f} s, second {times[1]:.2f} s")


def trainer() -> str:
    import tensorflow as tf

    import movinet
    from movinet.train import TrainConfig, Trainer, make_optimizer

    model = movinet.build_model("a0", "stream", num_classes=10)
    config = TrainConfig()
    step = Trainer(model, make_optimizer(config, 100), tf.distribute.get_strategy(), config, 8, 10)
    batch = (tf.random.uniform([8, 8, 172, 172, 3]), tf.zeros([8], tf.int32))
    began = time.perf_counter()
    step._train_step.get_concrete_function(batch)
    traced = time.perf_counter() - began
    began = time.perf_counter()
    step.train_step(batch)
    first = time.perf_counter() - began
    times = []
    for _ in range(4):
        began = time.perf_counter()
        step.train_step(batch)
        times.append(time.perf_counter() - began)
    return (f"A0 stream Trainer step (clipnorm {config.clipnorm}): tracing {traced:.2f} s, first run "
            f"{first:.2f} s, steps {sorted(times)[1]:.2f} s")


def trial() -> str:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from pathlib import Path

    import movinet
    from movinet.train import TrainConfig, Trainer, make_optimizer
    from search import load_space
    from search.samplers import make_sampler
    from search.training import check_training_sections

    space = check_training_sections(load_space(Path(__file__).resolve().parent.parent / "specs/spaces/demo.yaml"))
    candidate = make_sampler(space).suggest()
    model = movinet.build_model(candidate.spec, "stream", num_classes=space.num_classes, **candidate.options)
    config = TrainConfig()
    step = Trainer(model, make_optimizer(config, 100), tf.distribute.get_strategy(), config, 8, space.num_classes)
    batch = (tf.random.uniform([8, candidate.frames, candidate.resolution, candidate.resolution, 3]),
             tf.zeros([8], tf.int32))
    step.train_step(batch)
    times = []
    for _ in range(20):
        began = time.perf_counter()
        step.train_step(batch)
        times.append(time.perf_counter() - began)
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
    return (f"demo candidate {candidate.key} ({candidate.frames}x{candidate.resolution}, batch 8, one thread, "
            f"TF_ENABLE_ONEDNN_OPTS={onednn}): step {sorted(times)[10] * 1e3:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated, of {CASES}")
    parser.add_argument("--optimizer", default="adam", help="for the fit case: an optimizer name")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)   # one case, in this process
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.case:
        print({"fit": lambda: fit(args.optimizer), "trainer": trainer, "trial": trial}[args.case](), flush=True)
        return
    for case in args.only.split(","):
        if case not in CASES:
            parser.error(f"--only: unknown case {case!r}; expected some of {CASES}")
        done = subprocess.run([sys.executable, __file__, "--case", case, "--optimizer", args.optimizer],
                              capture_output=True, text=True)
        if done.returncode:
            print(f"{case}: failed\n{done.stderr[-2000:]}")
        else:
            print(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
