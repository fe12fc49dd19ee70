"""Where the wall time of a search goes: the share of it spent inside trials' training and evaluation.

    python benchmarks/search_bench.py [--trials 8] [--cpus 2] [--epochs 4] [--train-clips 512]
                                      [--save now.json] [--compare before.json]

Runs the demo space (specs/spaces/demo.yaml: synthetic motion clips, one CPU per trial) as a search
of ``--trials`` trials on a fresh local Ray of ``--cpus`` CPUs, with the space's own budget (4 epochs
of 512 clips; about 4 minutes on 2 CPUs) unless ``--epochs``/``--train-clips`` say otherwise, and
accounts for every second of every trial slot from the call to ``search.run_search`` until it
returns (results written). The search runs as any random search does: its trials are drawn up front
and start in decreasing multiply-adds (``Sampler.plan``), and only the trial processes import
TensorFlow, with oneDNN's kernels on unless TF_ENABLE_ONEDNN_OPTS says otherwise (as in
``movinet search``; ``search.ray_backend.PASSED_ON``).

    share = sum over trials of fit_seconds / (wall seconds x trial slots)

``fit_seconds`` is what each trial records itself (a column of trials.csv): the trainer's own time
of its epochs, that is the training steps with their data loading, then the validation pass. The
first training and evaluation steps of a trial trace their functions, so tracing is inside it;
the line "first-epoch excess" estimates that part as epoch 1 minus the mean of the later epochs.
Everything else is overhead and is broken down by where it happens: before the first trial
(driver checks, Ray start, worker processes), inside trials but outside their epochs (imports,
the per-frame latency probe, datasets, model and optimizer build), between trials of a slot, slots
left idle while the last trials finish, Ray shutdown and result writing. A slot is one trial at a
time; with one CPU per trial there are as many slots as CPUs.

The latency probe (build the candidate's stream model, trace its one-frame step, time 16 frames)
measures a column of the results, so it is evaluation of a kind; the share leaves it out all the
same, and the last line gives the share with it counted in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "specs" / "spaces" / "demo.yaml"
TARGET = 0.90


def bench_space(trials: int, epochs: int | None, train_clips: int | None):
    """The demo space with this benchmark's trial count, and its own budget unless given."""
    from search import load_space, space_from_dict
    from search.space import space_to_dict

    data = space_to_dict(load_space(DEMO))
    data["search"].update(num_trials=trials, algorithm="random", scheduler="none")
    data["search"]["resources"] = {"cpus": 1, "gpus": 0}
    data["budget"]["epochs"] = epochs or data["budget"]["epochs"]
    data["data"]["train_clips"] = train_clips or data["data"]["train_clips"]
    budget = f"{data['budget']['epochs']} epochs of {data['data']['train_clips']} clips"
    return space_from_dict(data, source=f"{DEMO} ({trials} trials, {budget})")


def epoch_fit_seconds(folder: Path, trial: str) -> list[float]:
    """Each epoch's fit time of one trial, from the reports Tune keeps in the trial's folder."""
    seconds, last = [], 0.0
    for path in sorted(folder.glob(f"ray/run-*/{trial}/result.json")):
        for line in path.read_text().splitlines():
            total = json.loads(line).get("fit_seconds")
            if total is not None:
                seconds.append(total - last)
                last = total
    return seconds


def assign_slots(rows: list[dict], slots: int) -> list[list[dict]]:
    """Trials in start order, each in the slot that freed up first (a slot runs one trial at a time)."""
    lanes: list[list[dict]] = [[] for _ in range(slots)]
    for row in sorted(rows, key=lambda r: r["started_at"]):
        free = [lane for lane in lanes if not lane or lane[-1]["ended_at"] <= row["started_at"] + 1e-3]
        lane = min(free or lanes, key=lambda lane: lane[-1]["ended_at"] if lane else 0.0)
        lane.append(row)
    return lanes


def account(result, began: float, ended: float, slots: int) -> dict:
    """Slot-seconds by where they went; they add up to (ended - began) x slots."""
    rows = [{**row, "ended_at": row["started_at"] + row["seconds"]} for row in result.rows]
    phases, at = {}, began
    for name, seconds in result.timings.items():
        phases[name] = (at, at + seconds)
        at += seconds
    prepared, ray_ready = phases["prepare"][1], phases["ray_start"][1]
    trials_done = phases["trials"][1]
    last_end = max(row["ended_at"] for row in rows)
    parts = dict.fromkeys((
        "fit", "fit_first_epoch_excess", "driver_prepare", "ray_start", "worker_start", "trial_import",
        "trial_probe", "trial_other", "between_trials", "idle_tail", "tune_wrap_up", "ray_stop",
        "results", "return"), 0.0)
    for lane in assign_slots(rows, slots):
        first = lane[0]["started_at"] if lane else trials_done
        parts["driver_prepare"] += min(first, prepared) - began
        parts["ray_start"] += max(0.0, min(first, ray_ready) - prepared)
        parts["worker_start"] += max(0.0, first - ray_ready)
        for before, after in zip(lane, lane[1:]):
            parts["between_trials"] += after["started_at"] - before["ended_at"]
        lane_end = lane[-1]["ended_at"] if lane else first
        parts["idle_tail"] += last_end - lane_end
        parts["tune_wrap_up"] += trials_done - last_end
        parts["ray_stop"] += phases["ray_stop"][1] - phases["ray_stop"][0]
        parts["results"] += phases["results"][1] - phases["results"][0]
        parts["return"] += ended - at
    for row in rows:
        fit = row["fit_seconds"] or 0.0
        parts["fit"] += fit
        parts["trial_import"] += row["import_seconds"] or 0.0
        parts["trial_probe"] += row["probe_seconds"] or 0.0
        parts["trial_other"] += row["seconds"] - fit - (row["import_seconds"] or 0.0) - (row["probe_seconds"] or 0.0)
        epochs = epoch_fit_seconds(result.folder, row["trial"])
        if len(epochs) > 1:
            parts["fit_first_epoch_excess"] += max(0.0, epochs[0] - statistics.mean(epochs[1:]))
    wall = ended - began
    # Which overheads a longer or shorter trial would leave as they are: the search's own (before
    # the first trial, each slot's first import, the end) and each trial's (the rest outside fit).
    first_imports = sum(lane[0]["import_seconds"] or 0.0 for lane in assign_slots(rows, slots) if lane)
    per_trial = (parts["trial_probe"] + parts["trial_other"] + parts["between_trials"]
                 + parts["trial_import"] - first_imports) / len(rows)
    per_search = sum(v for k, v in parts.items() if k != "fit_first_epoch_excess") - parts["fit"] \
        - per_trial * len(rows)
    return {"wall": wall, "slots": slots, "slot_seconds": wall * slots, "share": parts["fit"] / (wall * slots),
            "per_search": per_search, "per_trial": per_trial, "mean_fit": parts["fit"] / len(rows),
            "parts": parts, "trials": [{key: row[key] for key in ("trial", "key", "started_at", "seconds",
                                                                  "fit_seconds", "import_seconds", "probe_seconds",
                                                                  "macs", "top1", "pid")} for row in rows],
            "began": began}


LINES = (   # (part, label, counts in the share's numerator)
    ("fit", "inside training and evaluation (the share)", True),
    ("fit_first_epoch_excess", "  of which first-epoch excess (tracing, est.)", True),
    ("driver_prepare", "driver: load space, cost check, sampler", False),
    ("ray_start", "Ray start (local cluster)", False),
    ("worker_start", "Tune setup, trial actors start", False),
    ("trial_import", "in trial: import TF/Keras/movinet", False),
    ("trial_probe", "in trial: stream model build + latency", False),
    ("trial_other", "in trial: datasets, model/optimizer build", False),
    ("between_trials", "between trials of a slot", False),
    ("idle_tail", "slots idle while the last trials run", False),
    ("tune_wrap_up", "Tune wrap-up after the last trial", False),
    ("results", "result writing (tables, plot, best)", False),
    ("ray_stop", "Ray shutdown (the rest after result writing)", False),
    ("return", "summary printing", False),
)


def report(now: dict, before: dict | None) -> None:
    print(f"wall time {now['wall']:.1f} s, {now['slots']} trial slots: {now['slot_seconds']:.1f} slot-s "
          f"(accounted: {sum(v for k, v in now['parts'].items() if k != 'fit_first_epoch_excess'):.1f})")
    header = f"{'':<46} {'slot-s':>8} {'share':>7}"
    if before:
        header += f" | {'before':>8} {'share':>7} | {'change':>8}"
    print(header)
    for part, label, _ in LINES:
        value = now["parts"][part]
        line = f"{label:<46} {value:8.1f} {value / now['slot_seconds']:7.1%}"
        if before:
            old = before["parts"][part]
            line += f" | {old:8.1f} {old / before['slot_seconds']:7.1%} | {value - old:+8.1f}"
        print(line)
    line = f"{'wall time of the search (s)':<46} {now['wall']:8.1f} {'':>7}"
    if before:
        line += f" | {before['wall']:8.1f} {'':>7} | {now['wall'] - before['wall']:+8.1f}"
    print(line)
    line = f"{'share in training and evaluation':<46} {'':>8} {now['share']:7.1%}"
    if before:
        line += f" | {'':>8} {before['share']:7.1%} | {(now['share'] - before['share']) * 100:+7.1f}pt"
    print(line + f"   target >= {TARGET:.0%}: {'met' if now['share'] >= TARGET else 'NOT met'}")
    # share = n fit / (n fit + per_search + n per_trial) reaches TARGET when a trial's fit lasts this long
    needed = TARGET / (1 - TARGET) * (now["per_search"] / len(now["trials"]) + now["per_trial"])
    print(f"overheads: {now['per_search']:.1f} slot-s per search, {now['per_trial']:.1f} s per trial; with them "
          f"the share reaches {TARGET:.0%} for trials whose fit lasts >= {needed:.0f} s "
          f"(here {now['mean_fit']:.0f} s on average, for {len(now['trials'])} trials)")
    for label, share in (("  same without the first-epoch excess", traced_out),
                         ("  same with the latency probe counted in", with_probe)):
        line = f"{label:<46} {'':>8} {share(now):7.1%}"
        if before:
            line += f" | {'':>8} {share(before):7.1%} | {(share(now) - share(before)) * 100:+7.1f}pt"
        print(line)


def traced_out(figures: dict) -> float:
    parts = figures["parts"]
    return (parts["fit"] - parts["fit_first_epoch_excess"]) / figures["slot_seconds"]


def with_probe(figures: dict) -> float:
    parts = figures["parts"]
    return (parts["fit"] + parts["trial_probe"]) / figures["slot_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (one per trial)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: the demo space's, 4)")
    parser.add_argument("--train-clips", type=int, help="training clips (default: the demo space's, 512)")
    parser.add_argument("--output-dir", help="where the search writes (default: a temporary folder)")
    parser.add_argument("--save", help="write the figures to this JSON file")
    parser.add_argument("--compare", help="print the figures of this JSON file (--save) beside")
    parser.add_argument("--quiet", action="store_true", help="no progress lines from the search")
    args = parser.parse_args()
    before = json.loads(Path(args.compare).read_text()) if args.compare else None

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from search import run_search

    space = bench_space(args.trials, args.epochs, args.train_clips)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before the run")
    print(f"search: {space.source}, one CPU per trial, local Ray of {args.cpus} CPUs")
    with tempfile.TemporaryDirectory(prefix="search-bench-") as scratch:
        output = Path(args.output_dir or scratch)
        echo = (lambda line: None) if args.quiet else (lambda line: print(f"  | {line}", flush=True))
        began = time.time()
        result = run_search(space, backend="ray", num_cpus=args.cpus, output_dir=output, echo=echo)
        ended = time.time()
        now = account(result, began, ended, slots=args.cpus // int(space.settings.cpus))
    print(f"load average {os.getloadavg()[0]:.2f} after the run")
    print(f"{'trial':<10} {'start (s)':>9} {'seconds':>8} {'fit':>7} {'import':>7} {'probe':>6} {'MMACs':>6} "
          f"{'top1':>5}  pid")
    for row in sorted(now["trials"], key=lambda r: r["started_at"]):
        print(f"{row['trial']:<10} {row['started_at'] - began:9.1f} {row['seconds']:8.1f} {row['fit_seconds']:7.1f} "
              f"{row['import_seconds']:7.1f} {row['probe_seconds']:6.1f} {row['macs'] / 1e6:6.2f} "
              f"{row['top1']:5.3f}  {row['pid']}")
    report(now, before)
    if args.save:
        Path(args.save).write_text(json.dumps(now, indent=1))


if __name__ == "__main__":
    main()
