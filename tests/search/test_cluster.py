"""A real two-node cluster started with the `ray start` command line, searched through the CLI.

The nodes run in a network, PID and mount namespace of their own: loopback is the only address
there, so Ray keeps 127.0.0.1 (it replaces it with the machine's address elsewhere), and `ray stop`
inside sees no other Ray of this machine. Token authentication is on, as Ray 2.60 turns it on where
a token exists. The second node sees an empty folder where the driver's results folder and this
checkout are: a search must not rely on the nodes sharing the driver's disk.
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

import search
from search.cluster import ClusterError, authenticate
from search.results import OK

REPO = Path(search.__file__).resolve().parent.parent
DEMO = REPO / "specs" / "spaces" / "demo.yaml"
PORT = 6390

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

# PID 1 of the namespaces: starts the head, then a node whose view of the results folder and of
# the code is an empty folder of its own, says "ready", and stops both nodes when told to end.
CLUSTER = """
set -eu
stop() {{ ray stop --force >/dev/null 2>&1 || true; exit 0; }}
trap stop TERM INT EXIT
ip link set lo up
export RAY_AUTH_MODE=token
ray get-auth-token --generate >/dev/null 2>&1
timeout 240 ray start --head --port {port} --num-cpus 1 --include-dashboard=false --disable-usage-stats \\
    --temp-dir {temp} >{logs}/head.log 2>&1
unshare --mount sh -c 'cd / && for hidden in {hidden}; do mount -t tmpfs none "$hidden"; done &&
    exec timeout 240 ray start --address 127.0.0.1:{port} --num-cpus 1 --temp-dir {temp}' >{logs}/node.log 2>&1
echo ready
sleep infinity & wait
"""


def code_folders() -> list[Path]:
    """Where this process and a Python without PYTHONPATH import the code from: the folders the
    second node must not see, for its trials to run only the code the driver ships."""
    found = subprocess.run([sys.executable, "-c", "import movinet; print(movinet.__file__)"], cwd="/",
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                           capture_output=True, text=True)
    folders = {REPO}
    if found.returncode == 0:
        package = Path(found.stdout.strip()).parent
        if package.parent.name in ("site-packages", "dist-packages"):
            folders.update(package.parent / name for name in ("movinet", "search", "family"))
        else:
            folders.add(package.parent)
    return sorted(folder for folder in folders if folder.is_dir())


def _unshare_available() -> str | None:
    """Why the namespaces cannot be made here, or None."""
    if not all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip")):
        return "needs util-linux's `unshare` and `nsenter`, and iproute2's `ip`"
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"`unshare --net --pid --mount` refused here (needs root): {probe.stderr.decode().strip()}"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Yields (run, results): ``run(args, env_changes)`` runs a command inside the cluster's namespaces,
    ``results`` is the folder the second node cannot see."""
    reason = _unshare_available()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("cluster")
    home, logs, results = work / "home", work / "logs", work / "results"
    for folder in (home, logs, results):
        folder.mkdir()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    script = CLUSTER.format(port=PORT, temp=temp, logs=logs, hidden=" ".join(map(str, [results, *code_folders()])))
    env = {**os.environ, "HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    init = None
    namespace = subprocess.Popen(["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child",
                                  "bash", "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        ready = namespace.stdout.readline().strip()
        assert ready == "ready", f"the cluster did not start:\n{_tail(logs)}"
        init = int(Path(f"/proc/{namespace.pid}/task/{namespace.pid}/children").read_text().split()[0])

        def run(args, env_changes):
            command = ["nsenter", "--target", str(init), "--net", "--pid", "--mount", "--wd=" + str(REPO), *args]
            full_env = {**env, "PYTHONPATH": str(REPO), **env_changes}
            return subprocess.run(command, cwd=REPO, env={k: v for k, v in full_env.items() if v is not None},
                                  capture_output=True, text=True, timeout=300)

        yield run, results
    finally:
        if init is not None:
            os.kill(init, signal.SIGTERM)   # PID 1 stops both nodes; its end ends every process inside
        try:
            namespace.wait(timeout=60)
        except subprocess.TimeoutExpired:
            namespace.kill()   # --kill-child: PID 1 is killed with it
            namespace.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _tail(logs: Path) -> str:
    return "\n".join(f"{path.name}: ...{path.read_text()[-1500:]}" for path in sorted(logs.glob("*.log")))


def small_demo(folder: Path) -> Path:
    """demo.yaml at a budget of seconds: one epoch on a few clips."""
    space = yaml.safe_load(DEMO.read_text())
    space["data"].update(train_clips=32, val_clips=16)
    space["budget"]["epochs"] = 1
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


SEARCH = [sys.executable, "-m", "cli.main", "search"]


def test_a_search_by_address_runs_trials_on_both_nodes_and_keeps_every_result(cluster, tmp_path):
    run, results = cluster
    space = small_demo(tmp_path)
    done = run([*SEARCH, str(space), "--address", f"127.0.0.1:{PORT}", "--num-trials", "2",
                "--output-dir", str(results)], {"RAY_AUTH_MODE": None})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = pd.read_csv(results / "demo" / "trials.csv")
    assert list(trials["status"]) == [OK, OK], trials
    assert trials["node_id"].nunique() == 2, trials[["trial", "node_id", "pid"]]
    assert trials["top1"].between(0, 1).all() and trials["epoch"].eq(1).all()
    tune_trials = results / "demo" / "ray" / "run-0"   # Tune's own record, written by the driver
    assert {path.name for path in tune_trials.iterdir() if path.is_dir()} == set(trials["trial"])
    for trial in trials["trial"]:
        assert (tune_trials / trial / "result.json").stat().st_size > 0


@pytest.mark.parametrize("token_env, named", [
    ({"HOME": "/nonexistent"}, "no token was found"),
    ({"RAY_AUTH_TOKEN": "0" * 64}, "refused the token from RAY_AUTH_TOKEN"),
    ({"RAY_AUTH_TOKEN_PATH": "/nonexistent"}, "RAY_AUTH_TOKEN_PATH=/nonexistent"),
    ({"RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE=disabled")])
def test_a_missing_or_wrong_token_is_one_line_that_says_what_to_set(cluster, tmp_path, token_env, named):
    run, _ = cluster
    done = run([*SEARCH, str(small_demo(tmp_path)), "--address", f"127.0.0.1:{PORT}",
                "--output-dir", str(tmp_path / "out")], {"RAY_AUTH_MODE": None, **token_env})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"movinet search: error: the Ray cluster at 127.0.0.1:{PORT} ") and named in lines[0]
    assert "RAY_AUTH_TOKEN" in lines[0] or "RAY_AUTH_MODE=token" in lines[0]


def test_an_address_where_no_ray_head_listens_is_named_as_such():
    """A web server (the dashboard's port given by mistake, say) is told apart from a head."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(ClusterError, match=f"what listens at {address} does not answer as a Ray head"):
            authenticate(address)
    finally:
        server.shutdown()
