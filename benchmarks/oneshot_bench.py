"""The one-shot search against stand-alone training, side by side in one process (issue 26).

    python benchmarks/oneshot_bench.py [--space specs/spaces/oneshot_demo.yaml] [--epochs E]
        [--train-clips N] [--val-clips N] [--min-area A] [--num-classes N] [--rank-archs 20] [--random-archs 5]
        [--out results/oneshot_bench]

On the space's first input setting, with one recipe (the space's ``data`` and ``budget``), the
one-shot search and every stand-alone training ``--epochs`` long (by default the space's
``oneshot.steps`` in whole epochs, else ``budget.epochs``):

1. the one-shot search (``train_supernet``, one replica in this process) finds an architecture;
   it is trained from scratch, and so are ``--random-archs`` random architectures within +-5% of
   its multiply-adds; found top-1 against their median (TuNAS's protocol);
2. Kendall tau between the supernet's top-1 (inherited weights, batch statistics recomputed on
   every validation batch) and the stand-alone top-1 over ``--rank-archs`` architectures (those
   of 1, the rest drawn uniformly over the space), with a bootstrap 95% interval;
3. wall time of the one-shot search against one stand-alone training of the found (target-size)
   architecture, and against a random search (the multi-trial sampler, cost window on) run
   for the same wall time: its best top-1 against the found one's;
4. the supernet's training step with the largest architecture sampled, and its whole search step
   (training, reward pass, controller), against the stand-alone training step of the largest
   architecture on the same batch.

Prints one table and writes ``<out>/bench.json``. Timings on a shared machine are noisy: every
figure of a row comes from this one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "specs" / "spaces" / "oneshot_demo.yaml"))
    parser.add_argument("--epochs", type=int, help="the search's and every training's epochs (default: the "
                        "space's oneshot.steps in whole epochs, else budget.epochs)")
    parser.add_argument("--train-clips", type=int, help="override data.train_clips")
    parser.add_argument("--val-clips", type=int, help="override data.val_clips")
    parser.add_argument("--min-area", type=float, help="override data.min_area (stand-alone trainings' crops)")
    parser.add_argument("--num-classes", type=int, help="override data.num_classes (the synthetic set's directions)")
    parser.add_argument("--rank-archs", type=int, default=20, help="architectures of the rank correlation")
    parser.add_argument("--random-archs", type=int, default=5, help="random architectures at the found cost")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "oneshot_bench"))
    return parser.parse_args(argv)


def bench_space(args):
    from search import load_space
    from search.space import space_from_dict, space_to_dict
    from search.training import check_training_sections

    data = space_to_dict(load_space(args.space))
    overrides = (("train_clips", args.train_clips), ("val_clips", args.val_clips), ("min_area", args.min_area),
                 ("num_classes", args.num_classes))
    for key, value in overrides:
        if value is not None:
            data["data"][key] = value
    oneshot = data.get("oneshot", {})
    if args.epochs is not None:
        data["budget"]["epochs"] = args.epochs
    elif "steps" in oneshot:   # the space's own search length, in whole epochs of its global batch
        clips = int(data["data"]["train_clips"])
        global_batch = int(data["data"].get("batch_size", 8)) * int(data["search"].get("workers", 1))
        data["budget"]["epochs"] = math.ceil(oneshot["steps"] * global_batch / clips)
    # The search as long as one stand-alone training: budget.epochs passes over the training clips.
    data["oneshot"] = {**{k: v for k, v in oneshot.items() if k not in ("steps", "epochs")},
                       "epochs": data["budget"]["epochs"]}
    data["search"]["seed"] = args.seed
    return check_training_sections(space_from_dict(data, source=f"{args.space} (benchmark sizes)"))


def standalone(space, candidate) -> dict:
    """One stand-alone training with the multi-trial search's trial (same recipe for every architecture)."""
    from search.trial import run_trial
    from search.training import train_and_score

    return run_trial(train_and_score, candidate, space, lambda metrics: None)


def cost_matched(space, macs: int, count: int, exclude: set[str], rng: random.Random, tries: int = 20000):
    """Up to ``count`` distinct random architectures within +-5% of ``macs`` (rejection sampling)."""
    from search.candidate import candidate_macs, decode

    found = []
    setting = {p.name: p.choices[0] for p in space.params() if p.name.startswith("input.")}
    for _ in range(tries):
        point = space.sample(lambda p: setting.get(p.name, rng.choice(p.choices)))
        candidate = decode(space, point)
        if candidate.key in exclude or abs(candidate_macs(space, candidate) / macs - 1) > 0.05:
            continue
        exclude.add(candidate.key)
        found.append(candidate)
        if len(found) == count:
            break
    return found


def uniform_archs(space, count: int, exclude: set[str], rng: random.Random):
    """``count`` distinct architectures drawn uniformly over the space's choices."""
    from search.candidate import decode

    setting = {p.name: p.choices[0] for p in space.params() if p.name.startswith("input.")}
    out = []
    while len(out) < count:
        candidate = decode(space, space.sample(lambda p: setting.get(p.name, rng.choice(p.choices))))
        if candidate.key not in exclude:
            exclude.add(candidate.key)
            out.append(candidate)
    return out


def kendall_with_interval(x, y, rng_seed: int, resamples: int = 2000):
    """Kendall's tau-b and a percentile bootstrap 95% interval over the (x, y) pairs."""
    import numpy as np
    from scipy.stats import kendalltau

    x, y = np.asarray(x), np.asarray(y)
    tau = float(kendalltau(x, y).statistic)
    rng = np.random.default_rng(rng_seed)
    taus = []
    for _ in range(resamples):
        pick = rng.integers(0, len(x), len(x))
        value = kendalltau(x[pick], y[pick]).statistic
        if np.isfinite(value):
            taus.append(value)
    low, high = np.percentile(taus, [2.5, 97.5])
    return tau, float(low), float(high)


def restored_run(space, setting, folder: Path, seed: int):
    """The trained supernet of ``folder`` (its last checkpoint) in this process, one replica."""
    import tensorflow as tf

    from movinet.data import DataConfig
    from search.oneshot.loop import OneShotRun, load_clips
    from search.oneshot.settings import oneshot_settings

    config = DataConfig(**{**space.data, "frames": setting.frames, "resolution": setting.resolution,
                           "stride": setting.frame_stride})
    train, val, num_classes = load_clips(config)
    space = dataclasses.replace(space, data={**space.data, "num_classes": num_classes})
    run = OneShotRun(space, setting, oneshot_settings(space), tf.distribute.get_strategy(), train, val, seed)
    run.checkpoint.restore(tf.train.latest_checkpoint(folder / "checkpoints")).expect_partial()
    return run


def median_seconds(steps: dict, rounds: int = 6, repeats: int = 8, warmup: int = 3) -> dict:
    """The median seconds of each step of ``steps`` over ``rounds`` interleaved rounds of ``repeats``
    calls: a host whose speed drifts slows every step alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(repeats):
                began = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in times.items()}


def step_times(space, run, largest) -> dict:
    """Seconds of one training step of ``largest``: in the supernet (the search's own weight step)
    and stand-alone (``movinet.train``'s step), same batch, same recipe (loss, L2, clipping)."""
    import tensorflow as tf

    from movinet.model import build_model
    from movinet.train import Trainer, make_optimizer

    batch = run.train.batch(run.seed, 0, 0, 0, run.batch_size, 1)
    index = run.point_index(largest.params)
    sample = run.controller.fixed(index)
    supernet_step = tf.function(lambda: run.train_weights(sample, batch), autograph=False)

    recipe = dataclasses.replace(run.settings.weights_recipe(space.budget), precision="float32")
    model = build_model(largest.spec, "stream", num_classes=run.space.num_classes,
                        kernel_l2=recipe.weight_decay / 2.0, **largest.options)
    trainer = Trainer(model, make_optimizer(recipe, 1000), tf.distribute.get_strategy(), recipe, run.batch_size,
                      run.space.num_classes)
    seconds = median_seconds({"supernet": lambda: supernet_step().numpy(),
                              "standalone": lambda: trainer.train_step(batch)})
    return {"supernet_train_step_s": seconds["supernet"], "standalone_step_s": seconds["standalone"]}


def random_search_for(space, seconds: float) -> list[dict]:
    """The multi-trial random search (cost window on), trials one after another until ``seconds`` pass."""
    from search.samplers import make_sampler

    space = dataclasses.replace(space, settings=dataclasses.replace(space.settings, algorithm="random"))
    sampler = make_sampler(space)
    rows, began = [], time.monotonic()
    while not rows or time.monotonic() - began < seconds:
        candidate = sampler.suggest()
        if candidate is None:
            break
        rows.append({"key": candidate.key, **standalone(space, candidate)})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    import csv
    import subprocess

    from search.candidate import candidate_macs, decode
    from search.oneshot.loop import train_supernet
    from search.oneshot.settings import input_settings

    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")   # each stand-alone training retraces its steps: expected here
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space = bench_space(args)
    setting = input_settings(space)[0]
    rng = random.Random(args.seed)
    report = {"space": args.space, "setting": setting.key, "epochs": space.budget["epochs"],
              "train_clips": space.data.get("train_clips"), "val_clips": space.data.get("val_clips"),
              "num_classes": space.data.get("num_classes"), "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=ROOT).stdout.strip()}

    began = time.monotonic()
    import keras

    keras.utils.set_random_seed(args.seed)
    outcome = train_supernet(space, setting, folder=out / "supernet", seed=args.seed)
    report["oneshot_seconds"] = time.monotonic() - began
    found = decode(space, outcome["point"])
    found_macs = candidate_macs(space, found)
    print(f"one-shot search: {report['oneshot_seconds']:.0f} s, found {found_macs / 1e6:.2f}M multiply-adds "
          f"(target {space.objective.target_macs / 1e6:.2f}M)", flush=True)

    exclude = {found.key}
    matched = cost_matched(space, found_macs, args.random_archs, exclude, rng)
    others = uniform_archs(space, max(0, args.rank_archs - 1 - len(matched)), exclude, rng)
    archs = [("found", found)] + [("matched", c) for c in matched] + [("uniform", c) for c in others]

    run = restored_run(space, setting, out / "supernet", args.seed)
    rows = []
    for role, candidate in archs:
        supernet_top1 = run.supernet_top1(candidate.params)
        trained = standalone(space, candidate)
        rows.append({"role": role, "key": candidate.key, "macs": candidate_macs(space, candidate),
                     "supernet_top1": supernet_top1, "standalone_top1": trained["top1"],
                     "seconds": trained["seconds"]})
        print(f"{role:8s} {candidate.key} {rows[-1]['macs'] / 1e6:6.2f}M supernet {supernet_top1:.3f} "
              f"stand-alone {trained['top1']:.3f} ({trained['seconds']:.0f} s)", flush=True)
    with open(out / "architectures.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    found_row = rows[0]
    matched_top1 = [r["standalone_top1"] for r in rows if r["role"] == "matched"]
    report["found"] = {"macs": found_row["macs"], "standalone_top1": found_row["standalone_top1"],
                       "supernet_top1": found_row["supernet_top1"], "train_seconds": found_row["seconds"]}
    report["matched_random"] = {"count": len(matched_top1),
                                "median_top1": statistics.median(matched_top1) if matched_top1 else None,
                                "top1": matched_top1}
    tau, low, high = kendall_with_interval([r["supernet_top1"] for r in rows], [r["standalone_top1"] for r in rows],
                                           args.seed)
    report["kendall_tau"] = {"tau": tau, "ci95": [low, high], "architectures": len(rows)}
    report["search_vs_one_training"] = report["oneshot_seconds"] / found_row["seconds"]

    searched = random_search_for(space, report["oneshot_seconds"])
    best = max(searched, key=lambda r: r["top1"])
    report["random_search"] = {"trials": len(searched), "seconds": sum(r["seconds"] for r in searched),
                               "best_top1": best["top1"], "best_macs": best["macs"]}

    with open(out / "supernet" / "steps.csv") as f:
        search_steps = [float(r["seconds"]) for r in csv.DictReader(f)][5:]
    largest = decode(space, space.extreme_points()[1])
    report["step"] = {**step_times(space, run, largest), "search_step_s": statistics.median(search_steps),
                      "largest_macs": candidate_macs(space, largest)}
    step = report["step"]
    step["supernet_train_vs_standalone"] = step["supernet_train_step_s"] / step["standalone_step_s"]
    step["search_step_vs_standalone"] = step["search_step_s"] / step["standalone_step_s"]
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    print_report(report)
    return 0


def print_report(r: dict) -> None:
    found, matched, step = r["found"], r["matched_random"], r["step"]
    median = "-" if matched["median_top1"] is None else f"{matched['median_top1']:.3f}"
    lines = [
        f"space {r['space']} at {r['setting']}, {r['epochs']} epochs of {r['train_clips']} clips of "
        f"{r.get('num_classes')} classes, commit {r['commit']}",
        f"found vs random at equal cost: found top-1 {found['standalone_top1']:.3f} ({found['macs'] / 1e6:.2f}M) "
        f"vs median {median} of {matched['count']} random within +-5% (goal: found >= median)",
        f"Kendall tau supernet vs stand-alone over {r['kendall_tau']['architectures']} architectures: "
        f"{r['kendall_tau']['tau']:.2f} (95% CI {r['kendall_tau']['ci95'][0]:.2f} to "
        f"{r['kendall_tau']['ci95'][1]:.2f})",
        f"one-shot search {r['oneshot_seconds']:.0f} s = {r['search_vs_one_training']:.2f}x one stand-alone training "
        f"of the found architecture ({found['train_seconds']:.0f} s; goal <= 3x)",
        f"random search in the same wall time: {r['random_search']['trials']} trials, best top-1 "
        f"{r['random_search']['best_top1']:.3f} ({r['random_search']['best_macs'] / 1e6:.2f}M) vs found "
        f"{found['standalone_top1']:.3f} (goal: found better)",
        f"step, largest architecture ({step['largest_macs'] / 1e6:.2f}M): supernet training step "
        f"{step['supernet_train_step_s'] * 1e3:.0f} ms = {step['supernet_train_vs_standalone']:.2f}x the stand-alone "
        f"{step['standalone_step_s'] * 1e3:.0f} ms (goal <= 1.5x); whole search step (median over the search's "
        f"samples) {step['search_step_s'] * 1e3:.0f} ms = {step['search_step_vs_standalone']:.2f}x",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
