"""The devices a model trains on: what each one is, how to name it, and the precision that suits it.

A run's ``precision`` is ``"auto"`` unless set: mixed float16 on GPUs with Tensor Cores, mixed
bfloat16 on TPUs, float32 on CPUs (``resolve_precision``). Light on purpose: TensorFlow is imported
only by ``strategy_devices``, so the resolver runs, and is tested, on a plain list of ``Device``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

# Keras's mixed float16 pays on GPUs with Tensor Cores (compute capability 7.0, Volta, and later);
# on older cards it runs no faster than float32 and needs loss scaling all the same.
TENSOR_CORES = (7, 0)


@dataclasses.dataclass(frozen=True)
class Device:
    """One device the replicas of a model compute on.

    ``index`` is the device's number on its host: for a GPU, the one the host's driver gives it
    (a process that was handed GPUs 2 and 3 by ``CUDA_VISIBLE_DEVICES`` sees them as 0 and 1).
    """

    kind: str                                    # "CPU", "GPU" or "TPU"
    index: int = 0
    name: str = ""                               # the card's name, for a GPU
    compute_capability: tuple[int, int] | None = None

    def label(self) -> str:
        """'CPU', 'CPU:1', 'GPU:0 NVIDIA H100 80GB HBM3', 'TPU:3'."""
        if self.kind == "GPU":
            return f"GPU:{self.index} {self.name}".strip()
        return self.kind if self.index == 0 else f"{self.kind}:{self.index}"


def describe(devices: Sequence[Device]) -> str:
    """The devices' labels in one line, as `movinet train` prints them and trials.csv records them."""
    return ", ".join(device.label() for device in devices)


def auto_precision(devices: Sequence[Device]) -> str:
    """The Keras precision policy that suits ``devices``: mixed bfloat16 where a TPU computes,
    mixed float16 where only GPUs with Tensor Cores do, float32 otherwise (CPUs: their float16
    kernels are slower than float32 ones, and bfloat16's pay only with matrix units such as AMX,
    which this default does not assume)."""
    kinds = {device.kind for device in devices}
    if "TPU" in kinds:
        return "mixed_bfloat16"
    if kinds == {"GPU"} and all(device.compute_capability is None or device.compute_capability >= TENSOR_CORES
                                for device in devices):
        return "mixed_float16"
    return "float32"


def resolve_precision(precision: str, devices: Sequence[Device]) -> str:
    """``precision`` as given, or for ``"auto"`` the one that suits ``devices``."""
    return auto_precision(devices) if precision == "auto" else precision


def strategy_devices(strategy) -> list[Device]:
    """The devices the replicas of a ``tf.distribute`` strategy compute on."""
    import tensorflow as tf

    try:
        names = list(strategy.extended.worker_devices)
    except RuntimeError:   # the default strategy names none: TF places ops on the first GPU, if any
        gpus = tf.config.list_logical_devices("GPU")
        names = [(gpus or tf.config.list_logical_devices("CPU"))[0].name]
    return [_device(name) for name in names]


def _device(name: str) -> Device:
    import tensorflow as tf

    spec = tf.DeviceSpec.from_string(name)
    index = spec.device_index or 0
    if spec.device_type != "GPU":
        return Device(spec.device_type, index)
    physical = tf.config.list_physical_devices("GPU")
    details = tf.config.experimental.get_device_details(physical[index]) if index < len(physical) else {}
    return Device("GPU", host_gpu_index(index), details.get("device_name", ""),
                  details.get("compute_capability"))


def host_gpu_index(index: int) -> int:
    """The host's number of the process's GPU ``index``, through ``CUDA_VISIBLE_DEVICES`` (which Ray
    sets for each trial that asks for GPUs); ``index`` where it names none or names GPUs by UUID."""
    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    if index < len(visible) and visible[index].isdigit():
        return int(visible[index])
    return index
