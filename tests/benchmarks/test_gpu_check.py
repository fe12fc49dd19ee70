"""benchmarks/gpu_check.py where no GPU is: it measures nothing, says why, and fails."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="this host has a GPU to measure")
def test_without_a_gpu_the_check_says_so_and_exits_with_status_2():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert done.stdout.startswith(f"no GPU visible to TensorFlow {tf.__version__}"), done.stdout
    assert "--cpu-smoke" in done.stdout and "clips/s" not in done.stdout
