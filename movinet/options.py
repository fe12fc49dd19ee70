"""Build options: every setting of the official Movinet/MovinetClassifier besides the spec.

``mode`` picks the official defaults (base: non-causal 3D, SE 3d, swish/sigmoid; stream:
causal (2+1)D, SE 2plus3d, hard_swish/hard_sigmoid, positional encoding and classifier
activation as the model's spec says); any field can then be overridden.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping, Self

if TYPE_CHECKING:   # for annotations only: movinet.spec reads the option names from this module
    from movinet.spec import ModelSpec

MODES = ("base", "stream")
CONV_TYPES = ("3d", "2plus1d", "3d_2plus1d")
SE_TYPES = ("3d", "2d", "2plus3d", "none")
ACTIVATIONS = ("swish", "simple_swish", "hard_swish", "relu", "relu6", "sigmoid", "hard_sigmoid",
               "linear")
POOLING_TYPES = ("3d", "2d", "none")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    causal: bool = False
    conv_type: str = "3d"
    se_type: str = "3d"
    activation: str = "swish"
    gating_activation: str = "sigmoid"
    classifier_activation: str = "swish"
    use_positional_encoding: bool = False
    num_classes: int = 600
    dropout_rate: float = 0.0
    stochastic_depth_drop_rate: float = 0.0
    norm_momentum: float = 0.99
    norm_epsilon: float = 1e-3
    use_sync_bn: bool = False
    kernel_initializer: str = "he_normal"
    kernel_l2: float = 0.0
    bias_l2: float = 0.0
    se_ratio: float = 0.25
    average_pooling_type: str = "3d"

    def __post_init__(self):
        checks = (("conv_type", CONV_TYPES), ("se_type", SE_TYPES), ("activation", ACTIVATIONS),
                  ("gating_activation", ACTIVATIONS), ("classifier_activation", ACTIVATIONS),
                  ("average_pooling_type", POOLING_TYPES))
        for field, allowed in checks:
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r}: expected one of {list(allowed)}")
        if not self.causal and self.conv_type != "3d":
            raise ValueError(f"conv_type={self.conv_type!r} is a streaming conv type; base models use '3d'")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes!r}: expected a positive integer")
        for field in ("dropout_rate", "stochastic_depth_drop_rate"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{field}={getattr(self, field)!r}: expected a rate in [0, 1)")

    @property
    def positional_encoding(self) -> bool:
        """The official model applies positional encoding only in causal models."""
        return self.use_positional_encoding and self.causal

    @property
    def separable(self) -> bool:
        """(2+1)D: a spatial depthwise conv then a temporal one, each with its own BN."""
        return self.conv_type in ("2plus1d", "3d_2plus1d")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "ModelOptions":
        return dataclasses.replace(self, **changes)


def unknown_fields(cls, names) -> list[str]:
    """The sorted ``names`` that are not fields of the dataclass ``cls`` (config readers' check)."""
    return sorted(set(names) - {f.name for f in dataclasses.fields(cls)})


class Settings:
    """``to_dict``/``from_dict`` of a settings dataclass (``DataConfig``, ``TrainConfig``):
    ``from_dict`` refuses keys that are not fields, with the subclass's ``settings_error`` saying
    ``unknown <settings_kind> setting(s) [...]``."""

    settings_error: type[Exception] = ValueError   # class attributes, not dataclass fields
    settings_kind = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        unknown = unknown_fields(cls, values)
        if unknown:
            raise cls.settings_error(f"unknown {cls.settings_kind} setting(s) {unknown}")
        return cls(**values)


def resolve_options(spec: ModelSpec, mode: str = "base", **overrides) -> ModelOptions:
    """The official settings for ``spec`` in ``mode``, then the spec's own ``options``, then
    ``overrides`` on top."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {list(MODES)}")
    unknown = unknown_fields(ModelOptions, overrides)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}")
    if mode == "base":
        defaults: dict[str, Any] = {}
    else:
        defaults = dict(causal=True, conv_type="2plus1d", se_type="2plus3d", activation="hard_swish",
                        gating_activation="hard_sigmoid")
        defaults.update(spec.stream)
    defaults.update(spec.options)
    defaults.update({k: v for k, v in overrides.items() if v is not None})
    return ModelOptions(**defaults)
