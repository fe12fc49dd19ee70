"""Frames a second of the pipelined stream runner beside the whole-step runner, in one process.

    python benchmarks/pipeline_bench.py [--model a0] [--resolution 172] [--stages 2] [--threads 1]
                                        [--pairs 6] [--frames 60] [--no-xla]

Builds ``movinet.runners.KerasStreamRunner`` (one step a frame, `movinet predict`) and
``movinet.pipeline.PipelinedStreamRunner`` (`movinet predict --pipeline N`) on the same randomly
initialised model, checks that they give the same logits, then times runs of ``--frames`` frames,
alternating the two ``--pairs`` times so that a noisy host's slow phases hit both. Prints each
stage's time alone (the balance of the split), the median time between frames of each runner,
and their ratio; TensorFlow's pools take ``--threads`` threads (0: its default).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="a0")
    parser.add_argument("--resolution", type=int, default=172)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--no-xla", action="store_true", help="plain TensorFlow graphs instead of XLA")
    args = parser.parse_args()
    if args.threads:
        from movinet.threads import set_threads

        set_threads(args.threads)
    import numpy as np

    import movinet
    from movinet import runners
    from movinet.pipeline import PipelinedStreamRunner

    xla = not args.no_xla
    model = movinet.build_model(args.model, "stream")
    began = time.perf_counter()
    whole = runners.KerasStreamRunner(model, args.resolution, jit_compile=xla)
    pipeline = PipelinedStreamRunner(model, args.resolution, stages=args.stages, jit_compile=xla)
    clip = np.random.default_rng(0).random((args.frames, args.resolution, args.resolution, 3), dtype=np.float32)

    def run_whole():
        whole.init_states()
        return np.stack([whole.step(frame) for frame in clip])

    def run_pipeline():
        pipeline.init_states()
        return np.stack(list(pipeline.run(clip)))

    difference = np.abs(run_whole() - run_pipeline()).max()
    print(f"{args.model} stream at {args.resolution}, {'XLA' if xla else 'plain TF'}, threads "
          f"{args.threads or 'default'}: built and compiled in {time.perf_counter() - began:.1f} s; "
          f"max |logit difference| {difference:.2e} over {args.frames} frames")
    x = pipeline._image(clip[0])
    for stage in pipeline.stages:
        times = []
        for _ in range(3 * args.frames):
            start = time.perf_counter()
            stage.step(x).numpy()
            times.append(time.perf_counter() - start)
        print(f"  stage {stage.units[0]}..{stage.units[-1]} ({len(stage.units)} units): "
              f"{statistics.median(times) * 1000:.2f} ms alone")
        x = stage.step(x)
    per_frame = {"whole step": [], f"{args.stages} stages": []}
    for _ in range(args.pairs):
        for name, run in zip(per_frame, (run_whole, run_pipeline)):
            start = time.perf_counter()
            run()
            per_frame[name].append((time.perf_counter() - start) / args.frames * 1000)
    medians = {name: statistics.median(times) for name, times in per_frame.items()}
    for name, times in per_frame.items():
        print(f"  {name:<12} {medians[name]:6.2f} ms between frames (runs " + " ".join(f"{t:.2f}" for t in times) + ")")
    whole_ms, piped_ms = medians.values()
    print(f"  pipeline speed-up x{whole_ms / piped_ms:.2f} (frames a second {1000 / whole_ms:.0f} -> {1000 / piped_ms:.0f})")


if __name__ == "__main__":
    main()
