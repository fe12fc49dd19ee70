#!/usr/bin/env bash
# Builds the official MoViNet implementation (tf-models-official 2.20.0) in its own virtual
# environment, the reference the benchmarks compare against. Usage: make_official_env.sh [DIR]
set -euo pipefail
env_dir="${1:-.official-env}"
python3 -m venv "$env_dir"
"$env_dir/bin/pip" install --quiet --disable-pip-version-check \
  tensorflow-cpu==2.20.* tf-keras==2.20.* gin-config tf_slim immutabledict tensorflow-datasets \
  pycocotools opencv-python-headless matplotlib pyyaml pandas scipy psutil py-cpuinfo six
"$env_dir/bin/pip" install --quiet --disable-pip-version-check --no-deps tf-models-official==2.20.0
echo "official environment ready: $env_dir/bin/python"
