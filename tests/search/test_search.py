"""Searches end to end with stand-in trials: one contract for every algorithm and backend, a
two-node Ray cluster, crashing candidates, ASHA, and a search killed midway then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import fakes
from movinet.spec import load_spec
from search import SearchError, SpaceError, decode, load_space, run_search
from search.candidate import candidate_macs
from search.cluster import ClusterError, check_reachable
from search.results import FAILED, OK, STOPPED, Ledger

HERE = Path(__file__).resolve().parent
TINY = HERE / "tiny.yaml"
ALGORITHMS = ("random", "grid", "tpe", "multi_objective")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]   # one worker: Ray clusters do not share the machine


def space_file(tmp_path: Path, **changes) -> Path:
    """tiny.yaml with sections changed, e.g. data={...}, search={...} (merged into the file's)."""
    data = yaml.safe_load(TINY.read_text())
    for section, values in changes.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def quiet(_line: str) -> None:
    pass


def check_rows_are_in_space(space, rows):
    low, high = space.objective.bounds
    choices = {param.name: param.choices for param in space.params()}
    for row in rows:
        point = json.loads(row["point"])
        assert all(point[name] in choices[name] for name in point), point
        candidate = decode(space, point)
        assert candidate.key == row["key"]
        assert row["macs"] == candidate_macs(space, candidate)
        assert low <= row["macs"] <= high, "a candidate outside the cost window was trained"


def non_dominated(rows):
    """Keys of the trials no other trial matches on both top-1 and multiply-adds and beats on one."""
    def dominates(a, b):
        return a["top1"] >= b["top1"] and a["macs"] <= b["macs"] and (a["top1"] > b["top1"] or a["macs"] < b["macs"])
    return {b["key"] for b in rows if not any(dominates(a, b) for a in rows)}


@pytest.mark.parametrize("backend, algorithm", [("ray", a) for a in ALGORITHMS]
                         + [("kerastuner", a) for a in ALGORITHMS])
def test_every_algorithm_and_backend_keeps_the_contract(backend, algorithm, tmp_path, request):
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    space = load_space(TINY)
    # the model-based samplers past Optuna's 10 random start-up trials (rejected candidates count too)
    trials = 12 if algorithm in ("tpe", "multi_objective") else 5
    began = time.monotonic()
    result = run_search(TINY, backend=backend, algorithm=algorithm, num_trials=trials, output_dir=tmp_path,
                        trial_fn=fakes.quick_trial, echo=quiet)
    wall = time.monotonic() - began
    phases = ["prepare", "ray_start", "trials", "results", "ray_stop"] if backend == "ray" else \
        ["prepare", "trials", "results"]
    assert list(result.timings) == phases and result.timings["trials"] > 0
    assert sum(result.timings.values()) <= wall
    rows = result.rows
    assert len(rows) == trials and len({row["key"] for row in rows}) == trials
    assert all(row["status"] == OK and row["error"] is None for row in rows)
    check_rows_are_in_space(space, rows)
    for row in rows:
        assert row["reward"] == pytest.approx(row["top1"] - 0.5 * abs(row["macs"] / 1.2e6 - 1))
        # Ray runs trials in its worker processes, KerasTuner in this one; all on this host here
        assert row["hostname"] == os.uname().nodename and (row["pid"] != os.getpid()) == (backend == "ray")
    table = pd.read_parquet(result.folder / "trials.parquet")
    assert len(table) == len(pd.read_csv(result.folder / "trials.csv")) == trials
    assert set(table.columns) >= {"top1", "top5", "macs", "params", "latency_ms", "reward", "status", "error",
                                  "spec"}
    assert (result.folder / "pareto.png").stat().st_size > 0
    front = pd.read_csv(result.folder / "pareto.csv")
    assert front["macs"].is_monotonic_increasing and set(front["key"]) == non_dominated(rows)
    best = max(rows, key=lambda row: row["reward"])
    assert load_spec(result.best).blocks == decode(space, json.loads(best["point"])).spec.blocks
    assert json.loads((result.folder / "state.json").read_text())["rejected"] == result.rejected


def test_trials_are_placed_on_both_nodes(ray_cluster, tmp_path):
    path = space_file(tmp_path, data={"epoch_seconds": 1.0})
    result = run_search(path, num_trials=4, output_dir=tmp_path / "out", trial_fn=fakes.quick_trial,
                        echo=quiet)
    assert [row["status"] for row in result.rows] == [OK] * 4
    assert len({row["node_id"] for row in result.rows}) == 2
    assert len({(row["hostname"], row["pid"]) for row in result.rows}) >= 2


@pytest.mark.parametrize("when", ["after its last report", "at the start"])
@pytest.mark.parametrize("backend", ["ray", "kerastuner"])
def test_a_crashing_candidate_is_recorded_and_the_search_goes_on(backend, when, tmp_path, request):
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    knob = "crash_resolution" if when == "after its last report" else "crash_at_start"
    path = space_file(tmp_path, data={knob: 40})
    result = run_search(path, backend=backend, num_trials=4, output_dir=tmp_path / "out",
                        trial_fn=fakes.quick_trial, echo=quiet)
    failed = [row for row in result.rows if row["status"] == FAILED]
    assert len(result.rows) == 4 and failed and len(failed) < 4
    for row in result.rows:
        if row["resolution"] == 40:
            message = "injected crash in" if knob == "crash_resolution" else "injected crash at the start of"
            assert row["status"] == FAILED and row["error"] == f"RuntimeError: {message} {row['key']}"
            assert row["epoch"] == (2 if knob == "crash_resolution" else None), row
        else:
            assert row["status"] == OK and row["error"] is None
    assert load_spec(result.best).name.startswith("tiny-")
    table = pd.read_csv(result.folder / "trials.csv")
    assert table["error"].notna().sum() == len(failed)
    assert len(pd.read_csv(result.folder / "pareto.csv")) >= 1


def test_asha_stops_weak_trials_after_an_epoch(ray_cluster, tmp_path):
    path = space_file(tmp_path, budget={"epochs": 4}, data={"epoch_seconds": 0.3},
                      search={"scheduler": "asha"})
    result = run_search(path, num_trials=8, output_dir=tmp_path / "out", trial_fn=fakes.quick_trial,
                        echo=quiet)
    assert len(result.rows) == 8
    stopped = [row for row in result.rows if row["status"] == STOPPED]
    assert stopped and all(row["epoch"] < 4 for row in stopped)
    assert all(row["epoch"] == 4 for row in result.rows if row["status"] == OK)


def test_a_trial_sees_only_the_gpus_it_asked_for_and_grows_their_memory(ray_cluster, tmp_path):
    """The cluster's processes start with CUDA_VISIBLE_DEVICES=0 (conftest): a trial that asks for
    no GPU has it emptied, one that asks for half of Ray's GPU sees the one Ray gave it, and both
    let TensorFlow take GPU memory as needed rather than all of it."""
    for gpus, visible in ((0, ""), (0.5, "0")):
        markers = tmp_path / f"markers-{gpus}"
        markers.mkdir()
        path = space_file(tmp_path, data={"marker_dir": str(markers)},
                          search={"num_trials": 1, "resources": {"cpus": 1, "gpus": gpus}})
        result = run_search(path, output_dir=tmp_path / f"out-{gpus}", trial_fn=fakes.gpu_settings_trial,
                            echo=quiet)
        assert [row["status"] for row in result.rows] == [OK]
        seen = [json.loads(marker.read_text()) for marker in markers.glob("gpus-*.json")]
        assert seen == [{"CUDA_VISIBLE_DEVICES": visible, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}], gpus


def test_unreachable_cluster_fails_fast():
    began = time.monotonic()
    with pytest.raises(ClusterError, match="no Ray cluster answers at 127.0.0.1:9"):
        check_reachable("127.0.0.1:9")
    with pytest.raises(ClusterError, match="expected host:port"):
        check_reachable("nowhere")
    assert time.monotonic() - began < 10


DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    import fakes
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(fakes)
    from search import run_search
    run_search({space!r}, output_dir={out!r}, address={address!r}, trial_fn=fakes.quick_trial)
""")


def test_a_killed_search_resumes_without_losing_or_rerunning_finished_trials(ray_cluster, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    path = space_file(tmp_path, data={"epoch_seconds": 0.6, "marker_dir": str(markers)},
                      search={"num_trials": 6})
    out = tmp_path / "out"
    script = DRIVER.format(here=str(HERE), space=str(path), out=str(out), address=ray_cluster)
    driver = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = Ledger(out / "tiny")
    deadline = time.monotonic() + 180
    while len(ledger.rows()) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    before = ledger.rows()
    assert 2 <= len(before) < 6, "the search was not stopped midway"

    with pytest.raises(SearchError, match="pass --resume"):
        run_search(path, output_dir=out, trial_fn=fakes.quick_trial, echo=quiet)
    result = run_search(path, output_dir=out, resume=True, trial_fn=fakes.quick_trial, echo=quiet)
    after = result.rows
    assert len(after) == 6 and len({row["key"] for row in after}) == 6
    assert after[:len(before)] == before                       # nothing finished was lost
    starts = [name.split("-")[1] for name in os.listdir(markers) if name.startswith("start-")]
    for row in before:                                        # ... nor run again
        assert starts.count(row["key"]) == 1, row["key"]
    ends = {name.split("-")[1] for name in os.listdir(markers) if name.startswith("end-")}
    assert ends == {row["key"] for row in after}
    check_rows_are_in_space(load_space(path), after)


def test_resume_into_a_folder_without_a_search_is_an_error(tmp_path):
    path = space_file(tmp_path)
    (tmp_path / "empty" / "tiny").mkdir(parents=True)
    for out in (tmp_path / "empty", tmp_path / "nowhere"):
        with pytest.raises(SearchError, match=f"--resume: {out / 'tiny'} holds no search to continue"):
            run_search(path, backend="kerastuner", output_dir=out, resume=True, trial_fn=fakes.quick_trial,
                       echo=quiet)
    assert not (tmp_path / "nowhere").exists() and not any((tmp_path / "empty" / "tiny").iterdir())


@pytest.mark.parametrize("data, message", [
    ({"source": "videos"}, "data: source='videos': expected one of"),
    ({"source": "folder", "path": "no/such/folder"}, "data: no/such/folder: no such folder data"),
    ({"source": "csv", "path": str(TINY), "val_path": "no/val.csv"}, "data: no/val.csv: no such csv data")])
def test_data_that_every_trial_would_fail_on_stops_the_search_before_it_starts(data, message, tmp_path):
    path = space_file(tmp_path, data=data)   # num_classes stays set: the classes need not be counted
    with pytest.raises(SpaceError, match=message):
        run_search(path, backend="kerastuner", output_dir=tmp_path / "out", echo=quiet)
    assert not (tmp_path / "out").exists()


def test_a_search_whose_trials_all_fail_is_an_error_with_its_results_written(tmp_path):
    path = space_file(tmp_path, space={"input": {"resolution": [40], "frames": [4]}},
                      data={"crash_resolution": 40})
    with pytest.raises(SearchError, match=r"all 3 trials failed, the first with RuntimeError: injected crash"):
        run_search(path, backend="kerastuner", num_trials=3, output_dir=tmp_path / "out",
                   trial_fn=fakes.quick_trial, echo=quiet)
    table = pd.read_csv(tmp_path / "out" / "tiny" / "trials.csv")
    assert list(table["status"]) == [FAILED] * 3


CLI_DRIVER = textwrap.dedent("""
    import functools, sys
    sys.path.insert(0, {here!r})
    import fakes
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(fakes)
    import search
    search.run_search = functools.partial(search.run_search, trial_fn=fakes.quick_trial)   # the stand-in trial
    from cli.main import main
    sys.exit(main(["search", {space!r}, "--output-dir", {out!r}, "--num-cpus", "1"]))
""")


def test_ctrl_c_ends_a_search_with_status_130_saying_what_finished_and_resume_continues(tmp_path):
    """``movinet search`` on its own local Ray, sent SIGINT as Ctrl-C sends it (to its process
    group) once a trial has finished: Tune stops quietly, the command must not."""
    path = space_file(tmp_path, data={"epoch_seconds": 1.0}, search={"num_trials": 6})
    out = tmp_path / "out"
    script = CLI_DRIVER.format(here=str(HERE), space=str(path), out=str(out))
    driver = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ledger = Ledger(out / "tiny")
    deadline = time.monotonic() + 180
    while not ledger.rows() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    finished = len(ledger.rows())
    assert driver.returncode == 130 and 1 <= finished < 6, stderr[-3000:]
    assert stderr.splitlines()[-1] == (f"movinet search: interrupted after {finished} of 6 trials finished; "
                                       f"--resume continues the search in {out / 'tiny'}")
    assert len(pd.read_csv(out / "tiny" / "trials.csv")) == finished
    result = run_search(path, backend="kerastuner", output_dir=out, resume=True, trial_fn=fakes.quick_trial,
                        echo=quiet)
    assert len(result.rows) == 6 and len({row["key"] for row in result.rows}) == 6


@pytest.mark.parametrize("switch, default, opted_out", [("TF_ENABLE_ONEDNN_OPTS", "1", "0"),
                                                       ("TF_FORCE_GPU_ALLOW_GROWTH", "true", "false")])
def test_trials_run_onednn_and_grow_gpu_memory_unless_the_driver_opts_out(switch, default, opted_out, monkeypatch):
    from search.ray_backend import runtime_env

    monkeypatch.delenv(switch, raising=False)
    assert runtime_env()["env_vars"][switch] == default
    monkeypatch.setenv(switch, opted_out)
    assert runtime_env()["env_vars"][switch] == opted_out


KERAS_IMPORT = textwrap.dedent("""
    import sys
    from search.training import UNUSED_IN_TRIALS, _unused_modules_kept_out
    with _unused_modules_kept_out():
        kept_out = [name for name in UNUSED_IN_TRIALS if name in sys.modules and sys.modules[name] is None]
        if {load_keras}:
            import keras
            import movinet.train
    print(kept_out, sorted(name for name in UNUSED_IN_TRIALS if name in sys.modules), "av" in sys.modules)
    import matplotlib.pyplot   # still importable afterwards
""")


def test_trial_processes_load_keras_without_what_trials_never_use():
    """Ray's workers of a search are marked as trial processes, and there Keras loads without
    IPython and matplotlib (~1.4 s of each worker's import); elsewhere nothing is kept out. The
    trainer loads PyAV only when it decodes a video."""
    from search.ray_backend import runtime_env
    from search.trial import TRIAL_PROCESS

    assert runtime_env()["env_vars"][TRIAL_PROCESS] == "1"
    for marked, load_keras, printed in (("1", True, "['IPython', 'matplotlib'] [] False"),
                                         ("0", False, "[] [] False")):
        script = KERAS_IMPORT.format(load_keras=load_keras)
        done = subprocess.run([sys.executable, "-c", script], env={**os.environ, TRIAL_PROCESS: marked},
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().split("\n")[-1] == printed, done.stdout


FREEZE_IMPORTS = textwrap.dedent("""
    import gc
    import keras
    from search.training import _freeze_imports
    _freeze_imports()
    frozen = gc.get_freeze_count()
    later = [[] for _ in range(1000)]   # a trial's objects: the second call leaves them to the collector
    _freeze_imports()
    print(frozen, gc.get_freeze_count() == frozen)
""")


def test_a_trial_process_freezes_what_its_imports_made_once():
    """In a trial process, the objects the imports made leave the garbage collector's scans once
    (Keras's clear_session before each trial scanned them all); elsewhere nothing is frozen."""
    from search.trial import TRIAL_PROCESS

    for marked in ("1", "0"):
        done = subprocess.run([sys.executable, "-c", FREEZE_IMPORTS], env={**os.environ, TRIAL_PROCESS: marked},
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        frozen, once = done.stdout.split()[-2:]
        assert once == "True" and (int(frozen) > 100_000 if marked == "1" else int(frozen) == 0), done.stdout


HOLD_THREADS = textwrap.dedent("""
    import sys
    from search.trial import hold_threads
    hold_threads(1.5)   # a trial's CPUs, as the space's settings give them
    import tensorflow as tf
    (tf.constant(1.0) + 1.0).numpy()
    hold_threads(2)     # Ray reuses the process: the started runtime keeps its pools, no error
    print(tf.config.threading.get_intra_op_parallelism_threads(),
          tf.config.threading.get_inter_op_parallelism_threads(), "movinet.model" in sys.modules)
""")


def test_hold_threads_sizes_a_trials_pools_and_keeps_a_started_runtimes():
    """A trial process sizes TensorFlow's pools to its CPUs (through ``movinet.threads``, without
    loading the model code); a second trial in the same process keeps them."""
    done = subprocess.run([sys.executable, "-c", HOLD_THREADS], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().split("\n")[-1] == "1 1 False", done.stdout


def test_the_drivers_tensorflow_switch_reaches_trials_on_a_cluster(ray_cluster, tmp_path):
    """Cluster workers do not inherit the driver's environment: the switch goes in the job's."""
    markers = tmp_path / "markers"
    markers.mkdir()
    path = space_file(tmp_path, data={"marker_dir": str(markers)}, search={"num_trials": 2})
    script = DRIVER.format(here=str(HERE), space=str(path), out=str(tmp_path / "out"), address=ray_cluster)
    for value in ("1", "0"):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": value}
        subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, timeout=180)
        starts = [p for p in markers.iterdir() if p.name.startswith("start-")]
        assert len(starts) == 2 and {p.read_text() for p in starts} == {value}
        for marker in starts:
            marker.unlink()
        (tmp_path / "out" / "tiny").rename(tmp_path / f"done-{value}")


LOCAL_DRIVER = textwrap.dedent("""
    import sys, threading, ray
    import psutil   # Ray's own copy, on the path once ray is imported
    sys.path.insert(0, {here!r})
    import fakes
    from ray import cloudpickle
    cloudpickle.register_pickle_by_value(fakes)
    from search import run_search
    left = {{}}
    stop = ray.shutdown
    def shutdown():   # which of Ray's processes are still there when ray.shutdown begins
        left.update(ray._private.worker._global_node.all_processes)
        stop()
    ray.shutdown = shutdown
    result = run_search({space!r}, output_dir={out!r}, num_cpus=1, trial_fn=fakes.quick_trial, echo=lambda l: None)
    print(len(result.rows), list(result.timings), "monitor" in left, "gcs_server" in left,
          len(psutil.Process().children(recursive=True)), ray.is_initialized(),
          any(t.name == "ray-shutdown" for t in threading.enumerate()))
""")


def test_a_search_starts_its_own_local_ray_and_has_stopped_it_when_it_returns(tmp_path):
    """Without an address the search starts a Ray of its own, even where RAY_ADDRESS names another
    one; Ray shuts down while the results are written, and is gone when run_search returns, none of
    its processes left. The autoscaler's monitor is stopped before ``ray.shutdown`` stops the GCS:
    in the other order it waits on the GCS until it is killed a second later."""
    path = space_file(tmp_path, search={"num_trials": 2})
    script = LOCAL_DRIVER.format(here=str(HERE), space=str(path), out=str(tmp_path / "out"))
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}   # nothing listens there
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "2", done.stdout   # both trials ran
    assert "['prepare', 'ray_start', 'trials', 'results', 'ray_stop']" in done.stdout
    assert done.stdout.split()[-5:] == ["False", "True", "0", "False", "False"], done.stdout


REAL_DRIVER = textwrap.dedent("""
    import sys
    from search import run_search
    result = run_search({space!r}, output_dir={out!r}, address={address!r}, echo=lambda line: None)
    (row,) = result.rows
    print(row["status"], row["error"], row["device"],
          sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras", "optuna")))
""")


def test_a_search_driver_never_imports_tensorflow(ray_cluster, tmp_path):
    """Only trials train: the driver checks, schedules and writes results without TensorFlow
    (importing it would delay every search by seconds), also when the classes are counted; and a
    random search does without Optuna, which only the model-based samplers use. The trial records
    the device it trained on (this host's CPU)."""
    path = space_file(tmp_path, data={"source": "synthetic", "num_classes": None, "train_clips": 8,
                                      "val_clips": 4, "batch_size": 4},
                      budget={"epochs": 1, "verbose": 0}, search={"num_trials": 1})
    script = REAL_DRIVER.format(space=str(path), out=str(tmp_path / "out"), address=ray_cluster)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", "None", "CPU", "[]"], done.stdout


def test_the_default_trial_trains_a_stream_model_and_times_it_per_frame(tmp_path):
    path = space_file(tmp_path, data={"source": "synthetic", "train_clips": 8, "val_clips": 4, "batch_size": 4},
                      budget={"epochs": 1, "verbose": 0})
    began = time.time()
    result = run_search(path, backend="kerastuner", num_trials=1, output_dir=tmp_path / "out", echo=quiet)
    (row,) = result.rows
    assert row["status"] == OK, row["error"]
    assert 0.0 <= row["top1"] <= row["top5"] <= 1.0 and row["epoch"] == 1
    assert row["latency_ms"] > 0 and row["loss"] > 0
    # where the trial's time went, recorded by the trial and kept in the table
    assert began <= row["started_at"] <= time.time()
    assert row["fit_seconds"] > 0 and row["probe_seconds"] > 0 and row["import_seconds"] >= 0
    assert row["fit_seconds"] + row["probe_seconds"] + row["import_seconds"] <= row["seconds"]
    table = pd.read_csv(result.folder / "trials.csv")
    assert table.loc[0, "fit_seconds"] == pytest.approx(row["fit_seconds"])
    assert row["device"] == table.loc[0, "device"] == "CPU"
    candidate = decode(load_space(path), json.loads(row["point"]))
    assert row["params"] == candidate.cost(4).params


def test_a_real_search_through_the_cli_resumes_with_its_flags_and_writes_the_best_candidate(tmp_path, capsys):
    """``movinet search`` with real (tiny) trials: --algorithm grid and --num-trials 1, then
    --resume with --num-trials 2 trains only the grid's next candidate; the summary table and
    best_candidate.yaml follow the trials; without --resume the folder is refused (status 2)."""
    from cli.main import main
    from search.samplers import make_sampler

    path = space_file(tmp_path, data={"source": "synthetic", "train_clips": 8, "val_clips": 4, "batch_size": 4},
                      budget={"epochs": 1, "verbose": 0})
    out = tmp_path / "out"
    argv = ["search", str(path), "--backend", "kerastuner", "--algorithm", "grid", "--output-dir", str(out)]
    assert main(argv + ["--num-trials", "1"]) == 0
    first = Ledger(out / "tiny").rows()
    assert main(argv + ["--num-trials", "2"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(argv + ["--num-trials", "2", "--resume"]) == 0
    printed = capsys.readouterr().out
    rows = Ledger(out / "tiny").rows()
    grid = make_sampler(load_space(path), "grid")
    assert [row["key"] for row in rows] == [grid.suggest().key, grid.suggest().key]
    assert rows[:1] == first and all(row["status"] == OK and row["loss"] > 0 for row in rows)
    assert "2 trials: 2 ok, 0 stopped early, 0 failed" in printed
    for row in rows:
        assert any(line.split()[:4] == [str(row["trial"]), row["key"], OK, f"{row['top1']:.3f}"]
                   for line in printed.splitlines()), row["key"]
    best = max(rows, key=lambda row: (row["reward"], -row["macs"]))
    saved = yaml.safe_load((out / "tiny" / "best_candidate.yaml").read_text())
    candidate = decode(load_space(path), json.loads(best["point"]))
    assert saved["spec"]["blocks"] == candidate.spec.to_dict()["blocks"]
    assert (saved["frames"], saved["resolution"], saved["options"]) == \
        (best["frames"], best["resolution"], dict(candidate.options))


def test_asha_stops_the_real_trials_whose_first_epoch_fell_below_the_median_before_them(ray_cluster, tmp_path):
    """Real trials (``search.training``) under ASHA (grace 1 epoch, reduction factor 2): a trial
    stops after its first epoch where its reward then fell below the median of the first-epoch
    rewards the scheduler had seen before it, replayed here in the order of the progress lines
    (printed as the scheduler takes each result), and runs the whole budget otherwise. The
    search proposes the most multiply-adds first (all below the target with this seed), so on a
    tie in top-1 a later trial's reward is lower and some trial must stop."""
    path = space_file(tmp_path, data={"source": "synthetic", "train_clips": 8, "val_clips": 4, "batch_size": 4},
                      budget={"epochs": 2, "verbose": 0}, search={"scheduler": "asha"})
    lines = []
    result = run_search(path, num_trials=4, output_dir=tmp_path / "out", echo=lines.append)
    objective = load_space(path).objective
    rows = {row["trial"]: row for row in result.rows}
    first_epochs = []   # (trial, reward after epoch 1); top1 of 4 clips prints exactly in 3 decimals
    for line in lines:
        words = line.split()
        if words[0] == "trial" and words[2:4] == ["epoch", "1:"]:
            top1 = float(words[4].removeprefix("top1="))
            first_epochs.append((words[1], objective.reward(top1, rows[words[1]]["macs"])))
    must_stop, seen = {}, []
    for trial, reward in first_epochs:
        if seen and reward < np.percentile(seen, 50):
            must_stop[trial] = reward
        seen.append(reward)
    assert len(result.rows) == len(rows) == 4 and sorted(trial for trial, _ in first_epochs) == sorted(rows)
    assert sorted(pd.read_csv(result.folder / "trials.csv", dtype={"trial": str})["trial"]) == sorted(rows)
    assert must_stop, "no trial fell below the median: this search cannot tell ASHA from no scheduler"
    assert {trial for trial, row in rows.items() if row["status"] == STOPPED} == set(must_stop)
    for trial, row in rows.items():
        assert row["epoch"] == (1 if trial in must_stop else 2), row
        if trial in must_stop:
            assert row["reward"] == pytest.approx(must_stop[trial]), row
