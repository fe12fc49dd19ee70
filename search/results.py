"""Search results: the ledger of finished trials, and the tables, front and best spec built from it.

``<output-dir>/<search name>/`` holds::

    ledger.jsonl        one line per finished trial, appended as it ends (what --resume reads)
    state.json          counters of the search (candidates rejected by the cost filter, ...)
    space.yaml          the space searched (a resumed search must search the same one)
    trials.csv/.parquet one row per trial: metrics, status, error, spec YAML, where it ran (host,
                        process, device: 'CPU' or e.g. 'GPU:0 NVIDIA H100 80GB HBM3'), when it
                        began and where its time went (fit_seconds: training and evaluation)
    pareto.csv/.png     the front of top-1 against multiply-adds
    best_spec.yaml      the best candidate's spec (movinet.spec.load_spec reads it)
    best_candidate.yaml that spec with its clip and build options
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from movinet.spec import dump_spec, save_spec
from search.candidate import Candidate
from search.outcome import SearchError
from search.space import Objective, SearchSpace, load_space, space_to_dict

OK, STOPPED, FAILED = "ok", "stopped", "failed"   # ran its budget / stopped early by ASHA / raised
METRICS = ("top1", "top5", "loss", "macs", "params", "latency_ms", "reward", "epoch", "started_at", "seconds",
           "fit_seconds", "import_seconds", "probe_seconds")
COLUMNS = ("trial", "key", "status", "error", *METRICS, "frames", "resolution", "frame_stride",
           "options", "point", "spec", "node_id", "hostname", "pid", "device", "backend")


def trial_row(trial: str, candidate: Candidate, metrics: Mapping | None, *, status: str,
              error: str | None = None, backend: str = "", location: Mapping | None = None) -> dict:
    """One ledger row; ``metrics`` is the trial's last report (None if it reported nothing)."""
    metrics = metrics or {}
    location = location or {}
    row: dict[str, Any] = {"trial": trial, "key": candidate.key, "status": status, "error": error}
    row.update({name: metrics.get(name) for name in METRICS})
    row.update(frames=candidate.frames, resolution=candidate.resolution,
               frame_stride=candidate.frame_stride, options=json.dumps(dict(candidate.options)),
               point=json.dumps(dict(candidate.params)), spec=dump_spec(candidate.spec),
               node_id=metrics.get("node_id", location.get("node_id")),
               hostname=metrics.get("hostname", location.get("hostname")),
               pid=metrics.get("pid", location.get("pid")), device=metrics.get("device"), backend=backend)
    return row


def row_candidate(row: Mapping) -> Candidate:
    from movinet.spec import spec_from_yaml

    return Candidate(spec=spec_from_yaml(row["spec"], f"<trial {row['trial']}>"), frames=row["frames"],
                     resolution=row["resolution"], frame_stride=row["frame_stride"],
                     options=json.loads(row["options"]), params=json.loads(row["point"]))


def row_result(row: Mapping) -> dict | None:
    """What the samplers learn from a row: None for a failed trial."""
    if row["status"] == FAILED or row.get("top1") is None:
        return None
    return {name: row[name] for name in METRICS if row.get(name) is not None}


class Ledger:
    """Finished trials of one search, one JSON line each, flushed to disk as each trial ends."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / "ledger.jsonl"
        self.state_path = self.folder / "state.json"

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:    # a line cut short when the search was killed mid-write
                continue
        return rows

    def append(self, row: Mapping) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=_plain) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def save_state(self, **values) -> None:
        state = {**self.state(), **values}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, default=_plain))
        tmp.replace(self.state_path)


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def check_resumed_space(folder: Path, space: SearchSpace) -> None:
    """A resumed search must search the space it started with (``space.yaml``); its ``search``
    section (trials, resources, ...) may change."""
    saved = Path(folder) / "space.yaml"
    if not saved.exists():
        return
    before = {k: v for k, v in space_to_dict(load_space(saved)).items() if k != "search"}
    now = {k: v for k, v in space_to_dict(space).items() if k != "search"}
    if before != now:
        raise SearchError(f"{folder}: --resume needs the space it started with ({saved}); "
                          f"{space.source} differs outside its search section")


def check_output_folder(folder: Path, space: SearchSpace, resume: bool, *, kind: str, resumable: bool,
                        held: str | None, continue_phrase: str = "continue that search") -> None:
    """What ``folder`` holds against ``--resume``: with it, a ``kind`` to continue (``resumable``)
    that searched the same space; without it, nothing finished (``held`` names what is there)."""
    if resume and not resumable:
        raise SearchError(f"--resume: {folder} holds no {kind} to continue; drop --resume to start one")
    if held and not resume:
        raise SearchError(f"{folder} already holds {held}: pass --resume to {continue_phrase}, or give another "
                          "--output-dir")
    if resume and held:
        check_resumed_space(folder, space)


def pareto_front(rows: Iterable[Mapping]) -> list[Mapping]:
    """Trials no other trial beats on both top-1 (higher) and multiply-adds (lower), by cost."""
    scored = sorted((r for r in rows if _number(r.get("top1")) and _number(r.get("macs"))),
                    key=lambda r: (r["macs"], -r["top1"]))
    front, best = [], -math.inf
    for row in scored:
        if row["top1"] > best:
            front.append(row)
            best = row["top1"]
    return front


def best_row(rows: Iterable[Mapping], objective: Objective) -> Mapping | None:
    scored = [r for r in rows if r["status"] != FAILED and _number(r.get(objective.metric))]
    return max(scored, key=lambda r: (r[objective.metric], -r["macs"]), default=None)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def write_results(folder: Path, rows: list[Mapping], objective: Objective) -> dict[str, Path]:
    """Writes the tables, the Pareto plot and the best spec; returns what was written."""
    import pandas as pd

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    written = {"trials.csv": folder / "trials.csv", "trials.parquet": folder / "trials.parquet",
               "pareto.csv": folder / "pareto.csv"}
    table.to_csv(written["trials.csv"], index=False)
    table.to_parquet(written["trials.parquet"], index=False)
    front = pareto_front(r for r in rows if r["status"] != FAILED)
    pd.DataFrame(front, columns=list(COLUMNS)).to_csv(written["pareto.csv"], index=False)
    written["pareto.png"] = plot_pareto(folder / "pareto.png", rows, front, objective)
    best = best_row(rows, objective)
    if best is not None:
        written.update(save_best(folder, best))
    return written


def plot_pareto(path: Path, rows: list[Mapping], front: list[Mapping], objective: Objective) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    done = [r for r in rows if r["status"] != FAILED and _number(r.get("top1"))]
    ax.scatter([r["macs"] / 1e6 for r in done], [r["top1"] for r in done], c="0.6", s=18, label="trials")
    ax.plot([r["macs"] / 1e6 for r in front], [r["top1"] for r in front], "o-", c="C3", label="Pareto front")
    for bound in objective.bounds:
        ax.axvline(bound / 1e6, c="0.8", ls="--", lw=1)
    ax.axvline(objective.target_macs / 1e6, c="0.5", ls=":", lw=1, label="target")
    ax.set_xlabel("multiply-adds per clip (M)")
    ax.set_ylabel("validation top-1")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_best(folder: Path, row: Mapping) -> dict[str, Path]:
    """``best_spec.yaml`` (a spec file, with the search's numbers under ``published``) and
    ``best_candidate.yaml`` (the spec plus the clip and build options it was trained with)."""
    candidate = row_candidate(row)
    published = {name: row[name] for name in ("top1", "top5", "macs", "params", "latency_ms")
                 if _number(row.get(name))}
    spec = candidate.spec.replace(published=published, options=dict(candidate.options))
    paths = {"best_spec.yaml": save_spec(spec, folder / "best_spec.yaml")}
    body = {"spec": spec.to_dict(), "frames": candidate.frames, "resolution": candidate.resolution,
            "frame_stride": candidate.frame_stride, "options": dict(candidate.options)}
    paths["best_candidate.yaml"] = folder / "best_candidate.yaml"
    paths["best_candidate.yaml"].write_text(yaml.safe_dump(body, sort_keys=False, width=120))
    return paths


def format_row(row: Mapping) -> str:
    """One progress line for a finished trial."""
    if row["status"] == FAILED:
        return f"trial {row['trial']} {row['key']} failed: {row['error']}"
    return (f"trial {row['trial']} {row['key']} {row['status']}: top1={row['top1']:.3f} "
            f"macs={row['macs'] / 1e6:.2f}M params={row['params'] / 1e3:.1f}k "
            f"latency={_fmt(row.get('latency_ms'), '.2f')}ms reward={row['reward']:.3f} "
            f"epoch={row.get('epoch')} {_fmt(row.get('seconds'), '.0f')}s on {row.get('hostname')}:{row.get('pid')}")


def _fmt(value, spec: str) -> str:
    return format(value, spec) if _number(value) else "-"


def summary_table(rows: list[Mapping], objective: Objective, rejected: int, top: int = 10) -> str:
    """The text table printed at the end of a search: the best trials by the objective metric."""
    counts = {status: sum(r["status"] == status for r in rows) for status in (OK, STOPPED, FAILED)}
    lines = [f"{len(rows)} trials: {counts[OK]} ok, {counts[STOPPED]} stopped early, "
             f"{counts[FAILED]} failed; {rejected} candidates rejected by the cost filter "
             f"(window {objective.bounds[0] / 1e6:.2f}M-{objective.bounds[1] / 1e6:.2f}M multiply-adds)"]
    ranked = sorted((r for r in rows if r["status"] != FAILED and _number(r.get(objective.metric))),
                    key=lambda r: -r[objective.metric])[:top]
    header = ("trial", "key", "status", "top1", "top5", "MMACs", "kparams", "ms/frame", "reward", "clip")
    table = [header] + [
        (str(r["trial"]), r["key"], r["status"], _fmt(r["top1"], ".3f"), _fmt(r.get("top5"), ".3f"),
         f"{r['macs'] / 1e6:.2f}", f"{r['params'] / 1e3:.1f}", _fmt(r.get("latency_ms"), ".2f"),
         _fmt(r["reward"], ".3f"), f"{r['frames']}x{r['resolution']}/{r['frame_stride']}")
        for r in ranked]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              for row in table]
    failed = [r for r in rows if r["status"] == FAILED]
    lines += [f"failed: trial {r['trial']} {r['key']}: {r['error']}" for r in failed]
    return "\n".join(lines)
