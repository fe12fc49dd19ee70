"""movinet.devices: the precision that follows the devices, device names, and the devices a strategy uses."""

import pytest
import tensorflow as tf

from movinet.devices import Device, auto_precision, describe, host_gpu_index, resolve_precision, strategy_devices
from movinet.train_config import PRECISIONS, TrainConfig

H100 = Device("GPU", 0, "NVIDIA H100 80GB HBM3", (9, 0))
T4 = Device("GPU", 1, "Tesla T4", (7, 5))
P100 = Device("GPU", 0, "Tesla P100-PCIE-16GB", (6, 0))


@pytest.mark.parametrize("devices, expected", [
    ([Device("CPU")], "float32"),
    ([Device("CPU"), Device("CPU", 1)], "float32"),
    ([H100], "mixed_float16"),
    ([H100, T4], "mixed_float16"),
    ([P100], "float32"),                  # no Tensor Cores: float16 is no faster there
    ([H100, P100], "float32"),
    ([Device("GPU", 0, "AMD Instinct MI300X")], "mixed_float16"),   # no CUDA compute capability
    ([Device("TPU", i) for i in range(8)], "mixed_bfloat16"),
])
def test_the_automatic_precision_follows_the_devices(devices, expected):
    assert auto_precision(devices) == expected
    assert resolve_precision("auto", devices) == expected


@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p != "auto"])
def test_a_chosen_precision_is_kept_on_any_device(precision):
    for devices in ([Device("CPU")], [H100], [Device("TPU")]):
        assert resolve_precision(precision, devices) == precision


def test_training_settings_default_to_the_automatic_precision():
    assert TrainConfig().precision == "auto"


def test_devices_are_named_by_kind_index_and_card():
    assert describe([Device("CPU")]) == "CPU"
    assert describe([Device("CPU"), Device("CPU", 1)]) == "CPU, CPU:1"
    assert describe([H100, T4]) == "GPU:0 NVIDIA H100 80GB HBM3, GPU:1 Tesla T4"


def test_a_gpu_is_numbered_as_its_host_numbers_it(monkeypatch):
    """Ray hands a trial GPU 3 as CUDA_VISIBLE_DEVICES=3, which TensorFlow then calls GPU:0."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert [host_gpu_index(0), host_gpu_index(1)] == [3, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5c1e8b2a-0000-0000-0000-000000000000")
    assert host_gpu_index(0) == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert host_gpu_index(2) == 2


def test_the_default_strategy_computes_on_the_first_gpu_else_the_cpu():
    (device,) = strategy_devices(tf.distribute.get_strategy())
    if tf.config.list_physical_devices("GPU"):
        assert device.kind == "GPU" and device.name
    else:
        assert device == Device("CPU")
