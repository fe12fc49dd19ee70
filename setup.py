"""MoViNet family generator and architecture search (TensorFlow 2 / Keras 3, Ray Tune).

Which TensorFlow build comes with the install is chosen when it runs, by ``MOVINET_TENSORFLOW``
(docs/gpu.md): ``cpu`` (the default: the CPU-only wheel, half the download of the full one),
``gpu`` (the full wheel with the CUDA libraries, ``tensorflow[and-cuda]``) or ``installed`` (none:
keep the build already installed, e.g. a container's). Not an extra: pip adds an extra's
requirements to the default ones, and ``tensorflow`` and ``tensorflow-cpu`` would then write the
same ``tensorflow/`` package over each other.
"""

import os

from setuptools import find_packages, setup

TENSORFLOW_BUILDS = {
    "cpu": ["tensorflow-cpu>=2.20; platform_machine=='x86_64' or platform_machine=='aarch64'"],
    "gpu": ["tensorflow[and-cuda]>=2.20; sys_platform=='linux'"],
    "installed": [],
}


def tensorflow_requirement() -> list[str]:
    build = os.environ.get("MOVINET_TENSORFLOW", "cpu")
    if build not in TENSORFLOW_BUILDS:
        raise SystemExit(f"MOVINET_TENSORFLOW={build}: expected one of {', '.join(TENSORFLOW_BUILDS)}")
    return TENSORFLOW_BUILDS[build]


setup(
    name="movinet-search",
    version="0.1.0",
    description="Build, stream, train, export and search the MoViNet family of mobile video networks",
    packages=find_packages(include=["movinet", "movinet.*", "search", "search.*", "family", "family.*",
                                    "cli", "cli.*"]),
    package_data={"movinet.native": ["*.cc", "*.h"]},   # compiled on first use (movinet/native/__init__.py)
    python_requires=">=3.10",
    install_requires=[
        *tensorflow_requirement(),
        "keras>=3.10",
        # ml_dtypes 0.7.0 (the newest as of 2026-12) takes 0.53 s to import on a 2-core host, 0.6.0
        # 8 ms (its extension registers its ufunc loops one by one): a fifth of every TensorFlow
        # import here, paid by each command, test process and search trial. TensorFlow takes >=0.5.1.
        "ml_dtypes>=0.5.1,<0.7",
        "numpy",
        "pyyaml",
        "pandas",
        "pyarrow",
        "matplotlib",
        "av",
        "ray[tune]>=2.40",
        "optuna>=4.0",
        "ai-edge-litert",
        "keras-tuner",
    ],
    extras_require={"test": ["pytest", "pytest-xdist"]},
    entry_points={"console_scripts": ["movinet=cli.main:main"]},
)
