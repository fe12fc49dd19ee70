"""Speed and memory of this implementation beside the official one, measured in the same run.

    python benchmarks/bench.py [--official-python .official-env/bin/python] [--only stream,base,...] [--pairs 3]
    python benchmarks/bench.py --train-only stream [--batch 2] [--se-type none] [--jit-compile] [--profile]
    python benchmarks/bench.py --stream-only xla|tflite|pipeline [--threads 1]
    python benchmarks/bench.py --only tflite --official-python .official-env/bin/python [--threads 2]

Each figure is printed with the official figure and the ratio when the official environment
(benchmarks/make_official_env.sh) is given, and as a fraction of this machine's float32
matrix-multiply peak. Batch 1 and float32 unless said.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def matmul_peak_gflops() -> dict[str, float]:
    """float32 GFLOP/s of a 2048^3 matrix product by TensorFlow's kernel and by NumPy's BLAS; the
    larger is the machine's peak as far as software here reaches it."""
    import numpy as np
    import tensorflow as tf

    size = 2048
    a = tf.random.uniform([size, size])
    b = tf.random.uniform([size, size])
    matmul = tf.function(lambda: tf.matmul(a, b))
    rates = {"tensorflow": 2 * size ** 3 / timed(lambda: matmul().numpy(), repeats=10) / 1e9}
    x, y = a.numpy(), b.numpy()
    rates["numpy"] = 2 * size ** 3 / timed(lambda: x @ y, repeats=10) / 1e9
    return rates


def ours_stream(resolution: int = 172, frames: int = 60, model: str = "a0") -> float:
    """The Keras stream model stepped as the official one is measured: tf.function over the state dict."""
    import tensorflow as tf

    import movinet

    model = movinet.build_model(model, "stream")
    step = tf.function(lambda states, frame: model({**states, "image": frame}))
    states = model.init_states([1, 1, resolution, resolution, 3])
    frame = tf.random.uniform([1, 1, resolution, resolution, 3])
    holder = {"states": states}

    def run():
        logits, holder["states"] = step(holder["states"], frame)
        logits.numpy()

    return timed(run, repeats=frames, warmup=5)


def ours_runner_stream(resolution: int = 172, frames: int = 60, jit_compile: bool = False,
                       model: str = "a0") -> float:
    """movinet.runners.KerasStreamRunner (what `movinet predict` steps): BN folded, states in variables;
    with ``jit_compile`` the step is one XLA executable (`movinet predict --xla`)."""
    import numpy as np

    import movinet
    from movinet import runners

    runner = runners.KerasStreamRunner(movinet.build_model(model, "stream"), resolution, jit_compile=jit_compile)
    frame = np.random.default_rng(0).random((resolution, resolution, 3), dtype=np.float32)
    return timed(lambda: runner.step(frame), repeats=frames, warmup=5)


def ours_pipelined_stream(resolution: int = 172, frames: int = 60, stages: int = 2) -> float:
    """Seconds between frames of movinet.pipeline.PipelinedStreamRunner (`movinet predict --xla
    --pipeline 2`): XLA-compiled stages on their own threads over a run of ``frames`` frames; prints
    each stage's time alone, the balance its split gives."""
    import numpy as np

    import movinet
    from movinet.pipeline import PipelinedStreamRunner

    runner = PipelinedStreamRunner(movinet.build_model("a0", "stream"), resolution, stages=stages, jit_compile=True)
    clip = np.random.default_rng(0).random((frames, resolution, resolution, 3), dtype=np.float32)
    x = runner._image(clip[0])
    for stage in runner.stages:
        ms = timed(lambda: stage.step(x).numpy(), repeats=frames, warmup=5) * 1000
        print(f"stage {stage.units[0]}..{stage.units[-1]}: {ms:.2f} ms alone")
        x = stage.step(x)
    runs = [timed(lambda: list(runner.run(clip)), repeats=1, warmup=1 if i == 0 else 0) / frames for i in range(5)]
    return statistics.median(runs)


def ours_tflite_stream(resolution: int = 172, frames: int = 100, num_threads: int | None = None) -> float:
    import tempfile

    import numpy as np

    import movinet
    from movinet import export, runners

    model = movinet.build_model("a0", "stream")
    with tempfile.TemporaryDirectory() as folder:
        path = export.export_tflite(model, Path(folder) / "a0.tflite", resolution=resolution)
        runner = runners.TFLiteStreamRunner(path, num_threads=num_threads or os.cpu_count())
        frame = np.random.default_rng(0).random((resolution, resolution, 3), dtype=np.float32)
        return timed(lambda: runner.step(frame), repeats=frames, warmup=5)


def tflite_files(folder: Path, official_python: str, resolution: int = 172) -> dict[str, Path]:
    """A0 stream TF Lite files for one 172x172 frame: ours in float32 and int8 (calibrated on frames
    with carried states of synthetic motion clips) keeping their states inside, ours in float32 with
    the official signature (states in and out by name), and the official export made in its own
    environment (official signature)."""
    import keras

    import movinet
    from movinet import export
    from movinet.data.synthetic import synthetic_motion

    keras.utils.set_random_seed(0)     # int8 scales, and the int8 ops XNNPACK takes, follow the weights
    model = movinet.build_model("a0", "stream")
    files = {"ours float32": export.export_tflite(model, folder / "ours_float32.tflite", resolution=resolution),
             "ours float32, states outside": export.export_tflite(model, folder / "ours_float32_outside.tflite",
                                                                  resolution=resolution, states="outside")}
    calibration = synthetic_motion(4, 8, resolution, split="train")[0]
    files["ours int8"] = export.export_tflite(model, folder / "ours_int8.tflite", resolution=resolution,
                                              quantization="int8", calibration=calibration)
    if official_python and official_tflite(official_python, folder / "official_float32.tflite"):
        files["official float32"] = folder / "official_float32.tflite"
    return files


def official_tflite(official_python: str, path: Path) -> bool:
    """Writes the official A0 stream TF Lite export (172x172 frames) to ``path``, made in the official
    environment; says why and returns False where that fails."""
    out = subprocess.run([official_python, str(HERE / "official_bench.py"), "tflite", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(f"  (official TF Lite export failed: {out.stderr.strip().splitlines()[-1] if out.stderr else '?'})")
    return out.returncode == 0


def tflite_side_by_side(files: dict[str, Path], threads: int = 2, rounds: int = 31, frames: int = 10) -> dict:
    """{file: (median, fastest)} ms a frame of each file, measured in turns in one process (rounds of
    ``frames`` steps each): on a shared machine a ratio of such turns holds where separate runs do
    not, and the fastest rounds are those other jobs slowed least."""
    import numpy as np

    from movinet.runners import TFLiteStreamRunner

    runners = {name: TFLiteStreamRunner(path, num_threads=threads) for name, path in files.items()}
    frame = np.random.default_rng(0).random((172, 172, 3), dtype=np.float32)
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            times[name].append(timed(lambda: runner.step(frame), repeats=frames, warmup=2) * 1000)
    return {name: (statistics.median(values), min(values)) for name, values in times.items()}


def int8_agreement(files: dict[str, Path], threads: int = 2, streams: int = 6, frames: int = 32) -> float:
    """Per-frame top-1 agreement of ours int8 with ours float32 on held-out synthetic streams 4x the
    8-frame calibration clips (the weights are random: a trained model's figure is the export test's)."""
    import numpy as np

    from movinet.data.synthetic import synthetic_motion
    from movinet.runners import TFLiteStreamRunner, running_logits

    videos = synthetic_motion(streams, frames, 172, split="test")[0]
    top1 = {}
    for name in ("ours float32", "ours int8"):
        runner = TFLiteStreamRunner(files[name], num_threads=threads)
        top1[name] = np.stack([[np.argmax(logits) for _, logits in running_logits(runner, video)] for video in videos])
    return float((top1["ours float32"] == top1["ours int8"]).mean())


def print_tflite_ops(path: Path) -> None:
    """The ops of a TF Lite file by type, and those XNNPACK leaves to TF Lite's own kernels."""
    from movinet.runners import tflite_ops

    ops, outside = tflite_ops(path)
    print(f"    {sum(ops.values())} ops: " + ", ".join(f"{name} {count}" for name, count in ops.most_common()))
    print("    outside XNNPACK: " + (", ".join(f"{name} {count}" for name, count in outside.most_common()) or "none"))


def tflite_report(official_python: str, threads: int = 2) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-tflite-") as folder:
        files = tflite_files(Path(folder), official_python)
        for name, path in files.items():
            print(f"  {name}: {path.stat().st_size / 1e6:.2f} MB")
            print_tflite_ops(path)
        ms = tflite_side_by_side(files, threads)
        agreement = int8_agreement(files, threads)
        size = {name: path.stat().st_size for name, path in files.items()}
    def ratio(name, reference):
        return (f"{ms[name][0] / ms[reference][0]:.2f}x (fastest rounds: "
                f"{ms[name][1] / ms[reference][1]:.2f}x)")

    for name, (median, fastest) in ms.items():
        line = (f"A0 stream TF Lite {name}, 172x172, {threads} threads: {median:.2f} ms/frame "
                f"(fastest round {fastest:.2f})")
        if name != "ours float32":
            line += f", {ratio(name, 'ours float32')} ours float32"
        print(line)
    print(f"  int8 / float32: time {ratio('ours int8', 'ours float32')}, "
          f"file {size['ours int8'] / size['ours float32']:.2f}x, "
          f"per-frame top-1 agreement {agreement:.3f} (random weights, 32-frame held-out streams)")
    if "official float32" in ms:
        print(f"  ours float32 / official float32: time {ratio('ours float32', 'official float32')}; "
              f"states outside (the official signature): {ratio('ours float32, states outside', 'official float32')}")


def ours_base(frames: int = 50, resolution: int = 172, folded: bool = False, jit_compile: bool = False) -> float:
    """The base model on one clip through tf.function; ``folded``: its fold_batch_norm copy;
    ``jit_compile``: that copy through ``movinet.runners.xla_function``."""
    import tensorflow as tf

    import movinet
    from movinet import runners

    model = movinet.build_model("a0", "base")
    if folded or jit_compile:
        model = movinet.fold_batch_norm(model)
    clip = tf.random.uniform([1, frames, resolution, resolution, 3])
    infer = lambda x: model(x, training=False)  # noqa: E731
    forward = runners.xla_function(infer, clip) if jit_compile else tf.function(infer).get_concrete_function(clip)
    return timed(lambda: forward(clip).numpy(), repeats=3, warmup=1)


def ours_train(mode: str, batch: int = 8, frames: int = 8, resolution: int = 172,
               keras_optimizer: bool = False, jit_compile: bool = False, profile: bool = False,
               precision: str = "float32", model: str = "a0", **model_options) -> float:
    """Clips per second of training steps of ``model`` (A0 unless said); also prints the traced
    step's ops and tracing time.

    The optimizer is what `movinet train` builds: the recipe's RMSprop (rho 0.9, momentum 0.9,
    epsilon 1) with fused updates (and loss scaling in mixed float16), or with ``keras_optimizer``
    Keras's own RMSprop of the same settings, to compare the two. ``jit_compile`` compiles the whole
    step with XLA, ``precision`` is the Keras policy, ``model_options`` change the model (e.g.
    ``se_type="none"``), and ``profile`` prints where a step's op time goes.
    """
    import keras

    from movinet.allocator import keep_freed_memory

    keep_freed_memory()   # as the trainer does
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)   # as the trainer does: for the whole run
    try:
        return _train_rate(mode, batch, frames, resolution, keras_optimizer, jit_compile, profile, precision,
                           model, model_options)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train_rate(mode, batch, frames, resolution, keras_optimizer, jit_compile, profile, precision, model,
                model_options) -> float:
    import keras
    import tensorflow as tf

    import movinet
    from movinet import native
    from movinet.train import TrainConfig, learning_rate_schedule, make_optimizer

    model = movinet.build_model(model, mode, **model_options)
    config, steps = TrainConfig(learning_rate=1e-3, warmup_fraction=0.0, precision=precision), 100
    if keras_optimizer:
        optimizer = keras.optimizers.RMSprop(learning_rate_schedule(config, steps), rho=config.rmsprop_rho,
                                             momentum=config.momentum, epsilon=config.rmsprop_epsilon)
    else:
        optimizer = make_optimizer(config, total_steps=steps)
    optimizer.build(model.trainable_variables)   # as the trainer does: slots made outside the trace
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    clips = tf.random.uniform([batch, frames, resolution, resolution, 3])
    labels = tf.zeros([batch], tf.int32)

    @tf.function(jit_compile=jit_compile)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, tf.cast(model(clips, training=True), tf.float32))
            scaled = optimizer.scale_loss(loss)   # mixed float16's loss scaling; the loss itself otherwise
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    began = time.perf_counter()
    with native.disabled(jit_compile):   # XLA cannot hold custom ops
        ops = len(step.get_concrete_function().graph.get_operations())
    print(f"traced step: {ops:,} ops in {time.perf_counter() - began:.1f} s", flush=True)
    rate = batch / timed(lambda: step().numpy(), repeats=6 if mode == "stream" else 3, warmup=2)
    if profile:
        print_op_profile(lambda: step().numpy())
    return rate


def print_op_profile(step, steps: int = 5, top: int = 15) -> None:
    """Runs ``step`` under tf.profiler and prints op time per step by op type, then by op.

    Op times are each kernel's wall time, summed over TensorFlow's threads: a kernel that runs on
    both cores counts once, two kernels at once count twice. XLA executables show as one entry.
    """
    import collections
    import glob
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory(prefix="bench-profile-") as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            step()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]).read_bytes())
    by_type, by_op = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                ms = event.duration_ps / 1e9 / steps
                if name == "CpuExecutable::ExecuteAsyncOnStream":
                    by_type["(XLA executables)"] += ms
                elif ":" in name and "::" not in name and not name.startswith("EagerLocalExecute"):
                    by_type[name.rsplit(":", 1)[1]] += ms   # "op name:op type"; frames are left out
                    by_op[name] += ms
    print(f"op time per step over {steps} steps: {sum(by_type.values()):.1f} ms")
    for kind, ms in by_type.most_common(top):
        print(f"  {ms:8.1f} ms  {kind}")
    print("  heaviest ops:")
    for name, ms in by_op.most_common(top):
        print(f"  {ms:8.1f} ms  {name}")


def train_in_process(mode: str, onednn: bool) -> float:
    """ours_train(mode) in a fresh process, with TF's oneDNN kernels on (as ``movinet train`` runs) or off."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0"}
    out = subprocess.run([sys.executable, __file__, "--train-only", mode], capture_output=True, text=True,
                         check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def stream_in_process(kind: str, threads: int) -> float:
    """ms a frame of the XLA runner or the TF Lite export in a fresh process on ``threads`` threads
    (TensorFlow's pools are sized once per process: ``movinet predict --threads``)."""
    out = subprocess.run([sys.executable, __file__, "--stream-only", kind, "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    *notes, last = out.stdout.strip().splitlines()
    for note in notes:   # the pipeline's stage times
        print(f"    {note}")
    return float(last)


def peak_rss_mib(kind: str, frames: int) -> float:
    """Peak resident memory of a fresh process streaming (or running base on) ``frames`` frames.

    VmHWM of the new process image: ru_maxrss would carry the parent's peak across fork/exec.
    """
    code = f"""
import re, tensorflow as tf, movinet
kind, frames, res = {kind!r}, {frames}, 172
if kind == "stream":
    model = movinet.build_model("a0", "stream")
    step = tf.function(lambda s, f: model({{**s, "image": f}}))
    states = model.init_states([1, 1, res, res, 3])
    frame = tf.random.uniform([1, 1, res, res, 3])
    for _ in range(frames):
        logits, states = step(states, frame)
else:
    model = movinet.build_model("a0", "base")
    model(tf.random.uniform([1, frames, res, res, 3])).numpy()
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def cost_model_rate(seconds: float = 2.0) -> float:
    import movinet

    spec = movinet.load_spec("a2")
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        movinet.cost(spec, "stream", frames=50, resolution=224)
        count += 1
    return count / (time.perf_counter() - start)


def official_run(python: str, what: str, onednn: bool) -> dict | None:
    """One measurement of the official implementation in a fresh process, oneDNN on or off."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0"}
    out = subprocess.run([python, str(HERE / "official_bench.py"), what], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"  (official run failed: {out.stderr.strip().splitlines()[-1] if out.stderr else '?'})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def official(python: str, what: str) -> dict | None:
    """The official figure of ``what`` at its faster setting: TensorFlow turns oneDNN on by default
    on some CPUs (with AVX-512 VNNI or AMX) and off on others, and which is faster depends on the
    workload (on a Xeon with AMX: stream inference 10.7 ms off against 15.2 on, stream training
    7.4 clips/s off against 8.2 on), so both are measured and the better one is the reference."""
    if not python:
        return None
    runs = {onednn: official_run(python, what, onednn) for onednn in (False, True)}
    runs = {onednn: run for onednn, run in runs.items() if run is not None}
    if not runs:
        return None
    key = next(iter(next(iter(runs.values()))))
    better = max if key == "clips_per_s" else min
    best = better(runs, key=lambda onednn: runs[onednn][key])
    setting = lambda onednn: "oneDNN on" if onednn else "oneDNN off"  # noqa: E731
    print("  official " + ", ".join(f"{setting(onednn)} {run[key]:.3f}" for onednn, run in sorted(runs.items()))
          + f": {setting(best)} is the reference")
    return runs[best]


def row(name, ours, reference, unit, lower_is_better=True, peak=None, macs=None):
    line = f"{name:<48} ours {ours:10.3f} {unit}"
    if reference is not None:
        ratio = reference / ours if lower_is_better else ours / reference
        line += f" | official {reference:10.3f} {unit} | speed-up x{ratio:.2f}"
    if peak and macs:
        seconds = ours if unit == "s" else ours / 1000
        line += f" | {2 * macs / seconds / 1e9 / peak:.1%} of matmul peak"
    print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official-python", default=os.environ.get("MOVINET_OFFICIAL_PYTHON", ""))
    parser.add_argument("--only", default="peak,stream,tflite,base,train,memory,cost",
                        help="comma-separated parts; train_base or train_stream for one training mode")
    parser.add_argument("--pairs", type=int, default=1,
                        help="training: this many back-to-back pairs of ours and the official, and their median ratio")
    parser.add_argument("--train-only", choices=("base", "stream"),
                        help="only time our training step in this mode (prints clips/s last)")
    parser.add_argument("--keras-optimizer", action="store_true",
                        help="with --train-only: Keras's RMSprop instead of the fused one")
    parser.add_argument("--batch", type=int, default=8, help="with --train-only: clips per step")
    parser.add_argument("--se-type", help="with --train-only: the model's se_type (e.g. none)")
    parser.add_argument("--jit-compile", action="store_true",
                        help="with --train-only: the whole training step compiled by XLA")
    parser.add_argument("--profile", action="store_true",
                        help="with --train-only: print where a step's op time goes (tf.profiler)")
    parser.add_argument("--stream-only", choices=("xla", "tflite", "pipeline"),
                        help="only time this stream runner (prints ms a frame last)")
    parser.add_argument("--threads", type=int, help="with --stream-only: TensorFlow's / TF Lite's threads; the tflite part: the interpreters' (default 2)")
    args = parser.parse_args()
    if args.stream_only:
        if args.threads:
            from movinet.threads import set_threads

            set_threads(args.threads)
        seconds = {"xla": lambda: ours_runner_stream(jit_compile=True), "pipeline": ours_pipelined_stream,
                   "tflite": lambda: ours_tflite_stream(num_threads=args.threads)}[args.stream_only]()
        print(seconds * 1000)
        return
    if args.train_only:
        options = {"se_type": args.se_type} if args.se_type else {}
        print(ours_train(args.train_only, batch=args.batch, keras_optimizer=args.keras_optimizer,
                         jit_compile=args.jit_compile, profile=args.profile, **options))
        return
    only = set(args.only.split(","))
    if args.official_python and not Path(args.official_python).exists():
        print(f"official environment {args.official_python} not found: comparisons skipped "
              "(build it with benchmarks/make_official_env.sh)")
        args.official_python = ""
    elif not args.official_python:
        print("no --official-python given: comparisons skipped (build one with benchmarks/make_official_env.sh)")

    import movinet

    print(f"machine: {os.cpu_count()} CPUs; TensorFlow threads default")
    peak = None
    if "peak" in only:
        rates = matmul_peak_gflops()
        peak = max(rates.values())
        print(f"float32 matmul peak: {peak:.1f} GFLOP/s ("
              + ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items()) + ")")
    if "stream" in only:
        macs = movinet.cost("a0", "stream", frames=1, resolution=172).macs
        ref = official(args.official_python, "stream")
        row("A0 stream, 1 frame 172x172 (ms/frame)", ours_stream() * 1000, ref and ref["ms"], "ms",
            peak=peak, macs=macs)
        row("  KerasStreamRunner (BN folded, states held)", ours_runner_stream() * 1000, ref and ref["ms"],
            "ms", peak=peak, macs=macs)
        row("  KerasStreamRunner compiled by XLA", ours_runner_stream(jit_compile=True) * 1000,
            ref and ref["ms"], "ms", peak=peak, macs=macs)
        row("  TF Lite float32 export", ours_tflite_stream() * 1000, ref and ref["ms"], "ms", peak=peak, macs=macs)
        row("  XLA runner, one thread (predict --threads 1)", stream_in_process("xla", 1), ref and ref["ms"],
            "ms", peak=peak, macs=macs)
        row("  TF Lite float32, one thread", stream_in_process("tflite", 1), ref and ref["ms"], "ms",
            peak=peak, macs=macs)
        row("  XLA, 2 pipeline stages (--pipeline 2)", stream_in_process("pipeline", 1),
            ref and ref["ms"], "ms", peak=peak, macs=macs)
    if "tflite" in only:
        tflite_report(args.official_python, threads=args.threads or 2)
    if "base" in only:
        macs = movinet.cost("a0", "base").macs
        ref = official(args.official_python, "base")
        row("A0 base, 50x172x172 clip (s)", ours_base(), ref and ref["s"], "s", peak=peak, macs=macs)
        row("  BN folded (fold_batch_norm)", ours_base(folded=True), ref and ref["s"], "s", peak=peak, macs=macs)
        row("  BN folded, compiled by XLA", ours_base(jit_compile=True), ref and ref["s"], "s", peak=peak,
            macs=macs)
    for mode in ("base", "stream"):
        if "train" not in only and f"train_{mode}" not in only:
            continue
        # Ours as `movinet train` runs (oneDNN on) against the official at its faster setting, in
        # --pairs back-to-back pairs (on a host whose speed drifts, the median of the pairs' ratios
        # holds where two single runs minutes apart do not); then ours with oneDNN off, so the
        # kernels' share of the gain shows.
        ratios = []
        for pair in range(args.pairs):
            ours = train_in_process(mode, onednn=True)
            ref = official(args.official_python, f"train_{mode}")
            label = f"A0 {mode} training, 8x172x172 x8 (clips/s)" + (f", pair {pair + 1}" if args.pairs > 1 else "")
            row(label, ours, ref and ref["clips_per_s"], "clips/s", lower_is_better=False)
            if ref:
                ratios.append(ours / ref["clips_per_s"])
        if len(ratios) > 1:
            print(f"  median speed-up over {len(ratios)} pairs: x{statistics.median(ratios):.2f} "
                  f"(pairs: {', '.join(f'x{r:.2f}' for r in ratios)})", flush=True)
        row("  ours with oneDNN off", train_in_process(mode, onednn=False), None, "clips/s",
            lower_is_better=False)
    if "memory" in only:
        for kind in ("stream", "base"):
            short, long = peak_rss_mib(kind, 64), peak_rss_mib(kind, 512 if kind == "stream" else 128)
            print(f"A0 {kind} peak RSS: {short:.0f} MiB at 64 frames, {long:.0f} MiB at "
                  f"{512 if kind == 'stream' else 128} frames ({long / short - 1:+.1%})", flush=True)
        for name in movinet.named_specs():
            spec = movinet.load_spec(name)
            size = movinet.cost(name, "stream", frames=1).state_bytes
            print(f"  {name} stream state at {spec.input.resolution}px: {size:,} bytes")
    if "cost" in only:
        print(f"cost model: {cost_model_rate():,.0f} specs/s (a2, stream, 50x224x224)")


if __name__ == "__main__":
    main()
