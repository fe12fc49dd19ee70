"""The GPU path checked and measured in one run, on the first GPU TensorFlow sees.

    python benchmarks/gpu_check.py [--max-batch 256] [--parts train,stream,search,largest]
    python benchmarks/gpu_check.py --cpu-smoke     # the same steps, tiny, on the CPU (no figures)

Prints, line by line as each is measured:

1. the card (name, compute capability), TensorFlow's version and whether it was built with CUDA;
2. ``train``: A0 training throughput (clips/s) in base and stream mode on 8x172x172 clips at
   batch 8, in float32 and in mixed float16 (the ``auto`` precision on a GPU), each without and
   with XLA (the whole step compiled, as ``movinet train --jit`` compiles its gradient step);
3. ``stream``: A0 stream inference per frame (ms, batch 1, float32): the model's step under
   tf.function, and ``KerasStreamRunner`` compiled by XLA (``movinet predict --xla``);
4. ``search``: a 4-trial search of the demo space (1 epoch) with ``resources: {gpus: 0.5}``: two
   trials share the card at a time; each trial's device as trials.csv records it, its span, and
   whether trials ran on one card at once;
5. ``largest``: per mode and precision, the largest batch that fits (doubling from 8 up to
   ``--max-batch``) and its throughput without and with XLA.

Each measurement runs in a process of its own (a batch that does not fit leaves nothing behind).
Without a GPU it says so and exits with status 2; ``--cpu-smoke`` then runs every step with a
tiny model on 32x32 clips of 2 frames and a search of 2 trials on a Ray told of one GPU, so the
script itself is exercised where no GPU is. The last line names the host and commit, for the
figures' record in docs/gpu.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = ("train", "stream", "search", "largest")
MARK = "GPU_CHECK "   # a child's result lines start with it (the rest of its output is left out)
NO_GPU = 2
MIXED = "mixed_float16"   # what precision "auto" gives a GPU with Tensor Cores (movinet.devices)


@dataclasses.dataclass(frozen=True)
class Sizes:
    model: str
    frames: int
    resolution: int
    batch: int
    stream_frames: int
    trials: int
    train_clips: int


FULL = Sizes(model="a0", frames=8, resolution=172, batch=8, stream_frames=60, trials=4, train_clips=512)
SMOKE = Sizes(model="t0", frames=2, resolution=32, batch=2, stream_frames=5, trials=2, train_clips=16)


def emit(**row) -> None:
    print(MARK + json.dumps(row), flush=True)


# --- in a child process -----------------------------------------------------------------------

def job_devices() -> None:
    import tensorflow as tf

    from movinet.devices import strategy_devices

    gpus = [device for device in strategy_devices(tf.distribute.get_strategy()) if device.kind == "GPU"]
    emit(tensorflow=tf.__version__, cuda=tf.test.is_built_with_cuda(),
         gpus=[{"label": gpu.label(), "compute_capability": gpu.compute_capability} for gpu in gpus])


def job_train(sizes: Sizes, mode: str, precision: str, batch: int, xla: bool) -> None:
    from bench import ours_train

    rate = ours_train(mode, batch=batch, frames=sizes.frames, resolution=sizes.resolution,
                      jit_compile=xla, precision=precision, model=sizes.model)
    emit(clips_per_s=rate)


def job_largest(sizes: Sizes, mode: str, precision: str, max_batch: int) -> None:
    """Doubles the batch from ``sizes.batch`` until a step runs out of memory or ``max_batch`` is
    reached; emits each batch that fit with its throughput."""
    import gc

    import keras
    import tensorflow as tf

    from bench import ours_train

    batch = sizes.batch
    while batch <= max_batch:
        try:
            rate = ours_train(mode, batch=batch, frames=sizes.frames, resolution=sizes.resolution,
                              precision=precision, model=sizes.model)
        except tf.errors.ResourceExhaustedError:
            return
        emit(batch=batch, clips_per_s=rate)
        keras.backend.clear_session()
        gc.collect()
        batch *= 2


def job_stream(sizes: Sizes) -> None:
    from bench import ours_runner_stream, ours_stream

    emit(step_ms=1000 * ours_stream(sizes.resolution, sizes.stream_frames, model=sizes.model),
         xla_runner_ms=1000 * ours_runner_stream(sizes.resolution, sizes.stream_frames, jit_compile=True,
                                                 model=sizes.model))


def run_job(job: dict) -> None:
    sizes = Sizes(**job.pop("sizes"))
    part = job.pop("part")
    {"devices": lambda: job_devices(), "train": lambda: job_train(sizes, **job),
     "largest": lambda: job_largest(sizes, **job), "stream": lambda: job_stream(sizes)}[part]()


# --- in the driver ----------------------------------------------------------------------------

def child(part: str, sizes: Sizes, **job) -> list[dict]:
    """Runs one job in a fresh process; its result rows, then {'error': ...} if it failed."""
    command = [sys.executable, __file__, "--job", json.dumps({"part": part, "sizes": dataclasses.asdict(sizes),
                                                              **job})]
    done = subprocess.run(command, capture_output=True, text=True)
    rows = [json.loads(line[len(MARK):]) for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines()]
        raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Exhausted): ", line)]
        rows.append({"error": (raised or lines or [f"exit status {done.returncode}"])[-1][:200]})
    return rows


def rate_text(rows: list[dict]) -> str:
    if rows and "error" in rows[-1]:
        return f"failed: {rows[-1]['error']}"
    return f"{rows[-1]['clips_per_s']:8.1f} clips/s"


def check_train(sizes: Sizes) -> None:
    clip = f"{sizes.frames}x{sizes.resolution}x{sizes.resolution}"
    for mode in ("base", "stream"):
        for precision in ("float32", MIXED):
            for xla in (False, True):
                rows = child("train", sizes, mode=mode, precision=precision, batch=sizes.batch, xla=xla)
                print(f"{sizes.model.upper()} {mode:<6} training, {clip}, batch {sizes.batch:<4} {precision:<14} "
                      f"{'XLA' if xla else '   '}  {rate_text(rows)}", flush=True)


def check_largest(sizes: Sizes, max_batch: int) -> None:
    for mode in ("base", "stream"):
        for precision in ("float32", MIXED):
            fits = [row for row in child("largest", sizes, mode=mode, precision=precision, max_batch=max_batch)
                    if "batch" in row]
            label = f"{sizes.model.upper()} {mode:<6} training, {precision:<14}"
            if not fits:
                print(f"{label} no batch from {sizes.batch} fits", flush=True)
                continue
            largest = fits[-1]
            note = " (the --max-batch cap)" if largest["batch"] * 2 > max_batch else ""
            with_xla = child("train", sizes, mode=mode, precision=precision, batch=largest["batch"], xla=True)
            print(f"{label} largest batch {largest['batch']}{note}: {largest['clips_per_s']:8.1f} clips/s, "
                  f"with XLA {rate_text(with_xla)}", flush=True)


def check_stream(sizes: Sizes) -> None:
    rows = child("stream", sizes)
    if "error" in rows[-1]:
        print(f"{sizes.model.upper()} stream inference: failed: {rows[-1]['error']}", flush=True)
        return
    print(f"{sizes.model.upper()} stream inference, {sizes.resolution}x{sizes.resolution}, batch 1: "
          f"{rows[-1]['step_ms']:.2f} ms/frame (tf.function step), {rows[-1]['xla_runner_ms']:.2f} ms/frame "
          f"(KerasStreamRunner, XLA)", flush=True)


def check_search(sizes: Sizes, smoke: bool) -> None:
    """The demo space searched with half a GPU per trial; prints where and when each trial ran."""
    import ray

    from search import run_search
    from search.ray_backend import runtime_env, shutdown
    from search_bench import bench_space

    space = bench_space(sizes.trials, epochs=1, train_clips=sizes.train_clips)
    cpus = max(1, (os.cpu_count() or 2) // 2)   # two trials at a time: the CPUs split as the card is
    # The smoke run tells Ray of one GPU, which it schedules by and hands out as CUDA_VISIBLE_DEVICES=0;
    # TensorFlow finds none there, so its trials record the CPU.
    ray.init(num_cpus=os.cpu_count(), num_gpus=1 if smoke else None, include_dashboard=False,
             log_to_driver=False, runtime_env=runtime_env(), logging_level="ERROR")
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
            result = run_search(space, output_dir=folder, cpus=cpus, gpus=0.5, echo=lambda line: None)
    finally:
        shutdown()
    rows = sorted(result.rows, key=lambda row: row["started_at"] or 0.0)
    began = min((row["started_at"] for row in rows if row["started_at"]), default=0.0)
    print(f"demo search, {len(rows)} trials at resources {{cpus: {cpus}, gpus: 0.5}}:", flush=True)
    for row in rows:
        start = (row["started_at"] or began) - began
        print(f"  trial {row['trial']} {row['status']:<7} device {row['device']}, pid {row['pid']}, "
              f"{start:6.1f} s to {start + (row['seconds'] or 0.0):6.1f} s, top-1 {row['top1'] or 0.0:.3f}"
              + (f", {row['error']}" if row["error"] else ""), flush=True)
    shared = [(a["trial"], b["trial"]) for i, a in enumerate(rows) for b in rows[i + 1:]
              if a["device"] == b["device"] and a["started_at"] and b["started_at"]
              and b["started_at"] < a["started_at"] + a["seconds"]]
    print(f"  trials on one device at once: {', '.join('+'.join(pair) for pair in shared) or 'none'}", flush=True)


def record_line(argv: list[str]) -> str:
    try:
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return f"host {socket.gethostname()}, {os.cpu_count()} CPUs, commit {commit}, command: python {' '.join(argv)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    parser.add_argument("--max-batch", type=int, default=256, help="the largest batch the 'largest' part tries")
    parser.add_argument("--cpu-smoke", action="store_true", help="every step, tiny, on the CPU (no figures)")
    parser.add_argument("--job", help=argparse.SUPPRESS)   # one measurement, in a child process
    args = parser.parse_args()
    if args.job:
        run_job(json.loads(args.job))
        return 0
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts {','.join(unknown)}: expected some of {', '.join(PARTS)}")
    sizes = SMOKE if args.cpu_smoke else FULL
    began = time.monotonic()
    (found,) = child("devices", sizes)
    if "error" in found:
        print(f"TensorFlow failed to start: {found['error']}")
        return 1
    if not found["gpus"]:
        build = "a CUDA build" if found["cuda"] else "a build without CUDA (tensorflow-cpu: see docs/gpu.md)"
        print(f"no GPU visible to TensorFlow {found['tensorflow']}, {build}: nothing to measure"
              + ("; the smoke run goes on on the CPU" if args.cpu_smoke else " (--cpu-smoke runs a tiny version)"),
              flush=True)
        if not args.cpu_smoke:
            return NO_GPU
    else:
        cards = ", ".join(f"{gpu['label']} (compute capability {'.'.join(map(str, gpu['compute_capability']))})"
                          if gpu["compute_capability"] else gpu["label"] for gpu in found["gpus"])
        print(f"TensorFlow {found['tensorflow']} on {cards}", flush=True)
    if "train" in parts:
        check_train(sizes)
    if "stream" in parts:
        check_stream(sizes)
    if "search" in parts:
        check_search(sizes, args.cpu_smoke)
    if "largest" in parts:
        check_largest(sizes, sizes.batch * 2 if args.cpu_smoke else args.max_batch)
    print(f"{time.monotonic() - began:.0f} s; {record_line(sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
