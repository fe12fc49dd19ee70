"""pytest configuration: quiet TensorFlow, register markers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: heavy test (training, search, export); still part of CI")
