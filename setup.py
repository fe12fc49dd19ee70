"""MoViNet family generator and architecture search (TensorFlow 2 / Keras 3, Ray Tune)."""

from setuptools import find_packages, setup

setup(
    name="movinet-search",
    version="0.1.0",
    description="Build, stream, train, export and search the MoViNet family of mobile video networks",
    packages=find_packages(include=["movinet", "movinet.*", "search", "search.*", "family", "family.*",
                                    "cli", "cli.*"]),
    package_data={"movinet.native": ["*.cc", "*.h"]},   # compiled on first use (movinet/native/__init__.py)
    python_requires=">=3.10",
    install_requires=[
        "tensorflow-cpu>=2.20; platform_machine=='x86_64' or platform_machine=='aarch64'",
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
