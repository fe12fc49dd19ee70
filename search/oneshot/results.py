"""What a one-shot search writes, beside a multi-trial search's files in ``<output-dir>/<name>/``::

    space.yaml              the space searched (a resumed search must search the same one)
    summary.csv, .txt       one row per input setting: the found spec's exact cost against the target,
                            the supernet's reward, entropy and top-1 (and its stand-alone top-1 with --retrain)
    best_spec.yaml          the best setting's found spec (by the stand-alone objective with --retrain,
                            else by the supernet's reward), with its exact cost under ``published``
    <setting key>/          one per input setting (e.g. r32_f8_s1):
      steps.csv             per step: reward, baseline, sampled multiply-adds (mean, min, max over the
                            workers), entropy, supernet top-1, training loss, controller learning rate
      probabilities.csv     per log step: the controller's probability of every choice of every decision
      steps.png             reward, sampled cost against the target, entropy and supernet top-1 over the steps
      result.json           the setting's outcome (found point and spec, cost, reward, ...): it is finished
      best_spec.yaml        the found spec (argmax of every decision) on this setting's clip, exact cost
      checkpoints/          the supernet and controller (what --resume continues from)
    with --retrain, the found specs trained from scratch as ordinary trials:
    ledger.jsonl, trials.csv/.parquet, pareto.csv/.png (``search.results``)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Mapping

from movinet.spec import save_spec
from search.candidate import Candidate, decode
from search.oneshot.settings import InputSetting
from search.space import SearchSpace

RESULT_FILE = "result.json"
TABLES = ("steps.csv", "probabilities.csv")   # written by the training loop's chief
SUMMARY_FIELDS = ("setting", "frames", "resolution", "frame_stride", "macs", "target_macs", "cost_error", "params",
                  "supernet_top1", "reward", "entropy", "steps", "retrained_top1", "reported_frames",
                  "reported_resolution", "reported_macs")


def finished_settings(folder: Path) -> set[str]:
    """Keys of the input settings whose supernet finished (their ``result.json`` is written)."""
    return {path.parent.name for path in Path(folder).glob(f"*/{RESULT_FILE}")}


def write_setting(folder: Path, outcome: Mapping, files: Mapping[str, str]) -> None:
    """One finished setting: the tables its chief wrote (sent back in its report), the plot, the outcome.

    ``result.json`` goes last: its presence marks the setting as finished for ``--resume``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    if (folder / "steps.csv").exists():
        plot_steps(folder / "steps.csv", folder / "steps.png", outcome.get("target_macs"))
    (folder / RESULT_FILE).write_text(json.dumps(outcome, indent=1))


def found_candidate(space: SearchSpace, outcome: Mapping) -> Candidate:
    """The found architecture as an ordinary candidate of ``space`` (what a retraining trains)."""
    return decode(space, outcome["point"])


def plot_steps(steps_csv: Path, path: Path, target_macs: float | None) -> Path:
    """reward, sampled cost (against the target), entropy and supernet top-1 over the steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(steps_csv) as f:
        rows = list(csv.DictReader(f))
    step = [int(r["step"]) for r in rows]

    def column(name):
        return [float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows]

    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    (reward, macs), (entropy, top1) = axes
    reward.plot(step, column("reward"), lw=1, label="reward (mean over workers)")
    reward.plot(step, column("baseline"), lw=1, label="baseline")
    reward.set_ylabel("reward")
    reward.legend(fontsize=8)
    macs.plot(step, [m / 1e6 for m in column("macs")], lw=1, label="sampled (mean)")
    macs.fill_between(step, [m / 1e6 for m in column("macs_min")], [m / 1e6 for m in column("macs_max")],
                      alpha=0.25, label="sampled (min-max over workers)")
    if target_macs:
        macs.axhline(target_macs / 1e6, c="C3", ls="--", lw=1, label="target")
    macs.set_ylabel("multiply-adds (M)")
    macs.legend(fontsize=8)
    entropy.plot(step, column("entropy"), lw=1)
    entropy.set_ylabel("controller entropy (nats)")
    top1.plot(step, column("supernet_top1"), lw=1)
    top1.set_ylabel("supernet top-1 (reward batch)")
    for ax in (entropy, top1):
        ax.set_xlabel("step")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reported_candidate(candidate: Candidate, at: InputSetting | None) -> Candidate:
    """The candidate on the clip it is reported at (a proxy search's real input), or as searched."""
    if at is None:
        return candidate
    return dataclasses.replace(candidate, frames=at.frames, resolution=at.resolution, frame_stride=at.frame_stride)


def save_found_spec(path: Path, space: SearchSpace, candidate: Candidate, outcome: Mapping,
                    retrained: Mapping | None = None) -> Path:
    """The found spec with, under ``published``, the clip it is reported at and its exact cost there
    (``movinet.cost``, as the search counts: stream mode, the data's classes), and the search's numbers."""
    cost = candidate.cost(space.num_classes)
    published = {"frames": candidate.frames, "resolution": candidate.resolution,
                 "frame_stride": candidate.frame_stride, "macs": cost.macs, "params": cost.params,
                 "target_macs": float(outcome["target_macs"]),
                 "searched_at": outcome["setting"], "searched_macs": int(outcome["macs"]),
                 "supernet_top1": float(outcome["supernet_top1"]), "supernet_reward": float(outcome["reward"])}
    if retrained is not None and retrained.get("top1") is not None:
        published["top1"] = float(retrained["top1"])
    spec = candidate.spec.replace(options=dict(candidate.options), published=published)
    return save_spec(spec, path)


def write_summary(folder: Path, space: SearchSpace, outcomes: Mapping[str, Mapping],
                  candidates: Mapping[str, Candidate], rows: list[Mapping],
                  report_at: InputSetting | None = None) -> dict[str, Path]:
    """Every setting's found spec, ``summary.csv``/``.txt`` and the best spec; returns what was written."""
    folder = Path(folder)
    retrained = {row["key"]: row for row in rows if row.get("top1") is not None}
    table, written = [], {}
    for key in sorted(outcomes):
        outcome, candidate = outcomes[key], candidates[key]
        save_found_spec(folder / key / "best_spec.yaml", space, candidate, outcome, retrained.get(candidate.key))
        reported = reported_candidate(candidate, report_at)
        table.append({
            "setting": key, "frames": candidate.frames, "resolution": candidate.resolution,
            "frame_stride": candidate.frame_stride, "macs": int(outcome["macs"]),
            "target_macs": float(outcome["target_macs"]),
            "cost_error": outcome["macs"] / outcome["target_macs"] - 1,
            "params": candidate.cost(space.num_classes).params, "supernet_top1": outcome["supernet_top1"],
            "reward": outcome["reward"], "entropy": outcome["entropy"], "steps": outcome["steps"],
            "retrained_top1": retrained.get(candidate.key, {}).get("top1"),
            "reported_frames": reported.frames, "reported_resolution": reported.resolution,
            "reported_macs": reported.cost(space.num_classes).macs})
    if not table:
        return written
    written["summary.csv"] = folder / "summary.csv"
    with open(written["summary.csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(table)
    written["summary.txt"] = folder / "summary.txt"
    written["summary.txt"].write_text(format_summary(table) + "\n")
    best = max(table, key=lambda r: (r["retrained_top1"] is not None, _score(r, space)))
    key = best["setting"]
    written["best_spec.yaml"] = save_found_spec(folder / "best_spec.yaml", space,
                                                reported_candidate(candidates[key], report_at), outcomes[key],
                                                retrained.get(candidates[key].key))
    return written


def _score(row: Mapping, space: SearchSpace) -> float:
    """The setting's standing: the objective of its stand-alone top-1 when retrained, else the supernet's reward."""
    if row["retrained_top1"] is None:
        return row["reward"]
    return space.objective.reward(row["retrained_top1"], row["macs"]) if space.objective.metric == "reward" \
        else row["retrained_top1"]


def format_summary(table: list[Mapping]) -> str:
    """The text table printed at the end of a one-shot search."""
    header = ("setting", "MMACs", "target", "error", "supernet top1", "reward", "entropy", "steps", "retrained top1",
              "reported at")
    lines = [header] + [
        (r["setting"], f"{r['macs'] / 1e6:.2f}", f"{r['target_macs'] / 1e6:.2f}", f"{r['cost_error']:+.1%}",
         f"{r['supernet_top1']:.3f}", f"{r['reward']:.3f}", f"{r['entropy']:.2f}", str(r["steps"]),
         "-" if r["retrained_top1"] is None else f"{r['retrained_top1']:.3f}",
         f"{r['reported_frames']}x{r['reported_resolution']}: {r['reported_macs'] / 1e6:.2f}M")
        for r in table]
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))) for row in lines)
