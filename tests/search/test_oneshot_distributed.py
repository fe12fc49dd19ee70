"""The one-shot search on Ray: two data-parallel workers of one supernet under Ray Train, the command
line end to end (files, exit status, a retraining), and bad settings refused before anything trains."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

from cli.main import main
from movinet.cost import cost
from movinet.spec import load_spec
from search import SearchError, load_space
from search.candidate import MODE, decode
from search.oneshot.distributed import Resources, run_oneshot

HERE = Path(__file__).resolve().parent
TINY = HERE / "oneshot_tiny.yaml"
ROOT = HERE.parent.parent
SETTING = "r32_f4_s1"


def checkpoint_values(folder: Path) -> dict[str, np.ndarray]:
    """Every variable of the latest checkpoint in ``folder``, by its key."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(folder))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def movinet_command(*argv, env_extra=None, timeout=420):
    """`movinet ARGV` in a fresh process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    script = "import sys; from cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.xdist_group("ray")   # one worker: Ray clusters do not share the machine
def test_two_workers_keep_one_supernet_and_the_same_seed_finds_the_same_spec(ray_cluster, tmp_path):
    """2 workers x 1 CPU (one per node of the two-node test cluster): after the run both hold the same
    shared weights, controller logits and optimizer state, they sampled different architectures, the
    tables came back to the driver's folder; then `movinet search --algorithm oneshot --retrain` on a
    local Ray of 2 CPUs with the same seed finds the same spec and writes every result; run again,
    the folder is refused without --resume and with it nothing finished is trained again."""
    result = run_oneshot(TINY, output_dir=tmp_path / "cluster", address=ray_cluster, echo=lambda line: None)
    folder = result.folder / SETTING
    chief = checkpoint_values(folder / "checkpoints")
    other = checkpoint_values(folder / "scratch" / "worker1" / "checkpoints")
    assert chief.keys() == other.keys() and len(chief) > 10
    differences = {key: float(np.max(np.abs(chief[key] - other[key]))) for key in chief
                   if chief[key].dtype.kind == "f"}
    assert any(key.startswith("controller/") for key in differences), sorted(differences)
    assert max(differences.values()) <= 1e-6, sorted(differences.items(), key=lambda item: -item[1])[:5]
    with open(folder / "steps.csv") as f:
        steps = list(csv.DictReader(f))
    assert [int(row["step"]) for row in steps] == list(range(1, 7))
    assert any(row["macs_min"] != row["macs_max"] for row in steps), "both workers sampled the same architectures"
    found = load_spec(result.folder / "best_spec.yaml")
    space = load_space(TINY)
    outcome = json.loads((folder / "result.json").read_text())
    candidate = decode(space, outcome["point"])
    exact = cost(candidate.spec, MODE, frames=4, resolution=32, num_classes=4, **candidate.options).macs
    assert found.published["macs"] == exact == outcome["macs"]

    out = tmp_path / "local"
    done = movinet_command("search", str(TINY), "--algorithm", "oneshot", "--workers", "2", "--cpus", "1",
                           "--num-cpus", "2", "--retrain", "--output-dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    folder = out / "oneshot_tiny"
    again = load_spec(folder / "best_spec.yaml")
    assert again.to_dict()["blocks"] == found.to_dict()["blocks"] and again.options == found.options
    for name in ("steps.csv", "probabilities.csv", "steps.png", "result.json", "best_spec.yaml"):
        assert (folder / SETTING / name).stat().st_size > 0, name
    with open(folder / SETTING / "probabilities.csv") as f:
        header, *rows = list(csv.reader(f))
    assert [int(row[0]) for row in rows] == [2, 4, 6] and "b0.filters=8" in header
    for row in rows:   # each decision's probabilities sum to one
        by_decision = {}
        for name, value in zip(header[1:], row[1:]):
            by_decision.setdefault(name.split("=")[0], []).append(float(value))
        assert all(abs(sum(p) - 1) < 1e-5 for p in by_decision.values()), by_decision
    trials = list(csv.DictReader(open(folder / "trials.csv")))
    summary = list(csv.DictReader(open(folder / "summary.csv")))
    assert len(trials) == 1 and trials[0]["status"] == "ok" and yaml.safe_load(trials[0]["spec"])["blocks"] == \
        found.to_dict()["blocks"]
    assert float(summary[0]["retrained_top1"]) == float(trials[0]["top1"])
    assert "retrained top1" in done.stdout and f"[{SETTING}] step 6/6" in done.stdout

    steps_written = (folder / SETTING / "steps.csv").stat().st_mtime_ns
    again = movinet_command("search", str(TINY), "--num-cpus", "2", "--output-dir", str(out), timeout=120)
    assert again.returncode == 2 and "already holds a one-shot search (r32_f4_s1): pass --resume" in again.stderr
    resumed = movinet_command("search", str(TINY), "--num-cpus", "2", "--resume", "--retrain", "--output-dir",
                              str(out), timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "0 of 1 input settings to train" in resumed.stdout and "retraining" not in resumed.stdout
    assert (folder / SETTING / "steps.csv").stat().st_mtime_ns == steps_written
    assert len(list(csv.DictReader(open(folder / "trials.csv")))) == 1


def test_workers_that_do_not_fit_are_one_error_line_before_ray_starts(tmp_path, capsys):
    status = main(["search", str(TINY), "--algorithm", "oneshot", "--workers", "3", "--cpus", "1", "--num-cpus", "2",
                   "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and len(err.splitlines()) == 1, err
    if ray.is_initialized():   # this test process is connected to the search tests' cluster: it is checked
        assert err.startswith("movinet search: error: --workers 3 x --cpus 1 does not fit the Ray cluster: ")
    else:                      # no Ray runs: the local Ray it would start is checked before it starts
        assert err.startswith("movinet search: error: --workers 3 x --cpus 1 does not fit the local Ray "
                              "(2 CPUs, --num-cpus): 2 CPUs on 1 node ")
    assert err.endswith(" hold 2 such workers; give fewer workers or fewer CPUs per worker\n")
    assert not (tmp_path / "oneshot_tiny").exists()


def test_resume_into_a_folder_without_a_oneshot_search_is_one_error_line(tmp_path, capsys):
    (tmp_path / "oneshot_tiny").mkdir()          # e.g. the wrong --output-dir, or a multi-trial search's
    status = main(["search", str(TINY), "--resume", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and err == (f"movinet search: error: --resume: {tmp_path / 'oneshot_tiny'} holds no one-shot "
                                   "search to continue; drop --resume to start one\n"), err
    assert list((tmp_path / "oneshot_tiny").iterdir()) == []


@pytest.mark.parametrize("nodes, workers, cpus, gpus, fits", [
    ([{"CPU": 2}], 2, 1, 0, True),
    ([{"CPU": 2}], 2, 1.5, 0, False),                        # 3 CPUs of 2
    ([{"CPU": 1}, {"CPU": 1}], 2, 1, 0, True),               # one worker per node
    ([{"CPU": 1.5}, {"CPU": 1.5}], 3, 1, 0, False),          # 3 CPUs in all, but no node holds two
    ([{"CPU": 8, "GPU": 1}], 2, 1, 1, False),                # one GPU for two workers
    ([{"CPU": 8, "GPU": 2}], 2, 1, 1, True),
])
def test_workers_must_fit_the_nodes_not_only_the_total(nodes, workers, cpus, gpus, fits):
    resources = Resources(workers, cpus, gpus)
    if fits:
        resources.check_fits(nodes, "the cluster")
    else:
        with pytest.raises(SearchError, match=f"--workers {workers} x --cpus {cpus:g}"):
            resources.check_fits(nodes, "the cluster")


@pytest.mark.parametrize("override, message", [
    ({"algorithm": "oneshot", "workers": 0}, "search.workers: expected a positive integer"),
    ({"oneshot": {"op_warmup": 0.5, "rl_delay": 0.25}}, "oneshot.op_warmup: a warm-up of 0.5"),
])
def test_impossible_settings_are_one_error_line(tmp_path, capsys, override, message):
    data = yaml.safe_load(TINY.read_text())
    for key, value in override.items():
        if key == "oneshot":
            data["oneshot"].update(value)
        else:
            data["search"][key] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    status = main(["search", str(path), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err
