"""A two-node Ray cluster (one CPU each, and one GPU on the head node as far as Ray knows) shared
by every search test that runs on Ray."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))   # the stand-in trial functions (fakes.py), here and in subprocesses


@pytest.fixture(scope="session")
def ray_cluster():
    """Yields the cluster's address; this process is connected to it as a driver."""
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    import ray
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    import fakes
    from search.ray_backend import runtime_env

    cloudpickle.register_pickle_by_value(fakes)   # workers cannot import the tests folder
    # Ray's GPU is a count it schedules by (this host has none): trials that ask for a share of it
    # get CUDA_VISIBLE_DEVICES from Ray. The nodes' processes start with the variable set, as on a
    # host whose GPUs were chosen for Ray, so a trial that asks for none sees them unless hidden.
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    try:
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1, num_gpus=0)
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env=runtime_env(), log_to_driver=False)
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()
