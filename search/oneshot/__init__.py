"""One-shot (TuNAS) search: one weight-sharing supernet per input setting, with a REINFORCE controller.

    space.yaml -> settings (OneShotSettings, InputSetting) -> supernet (shared weights, masks, switches)
               -> controller (one categorical per decision) -> loop (train step, reward step, update)
               -> the argmax architecture as a point of the space (an ordinary candidate)

Names load lazily: reading settings never imports TensorFlow.
"""

import importlib as _importlib

_LAZY = {"InputSetting": "search.oneshot.settings", "OneShotSettings": "search.oneshot.settings",
         "oneshot_settings": "search.oneshot.settings", "input_settings": "search.oneshot.settings",
         "train_supernet": "search.oneshot.loop"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'search.oneshot' has no attribute {name!r}")


__all__ = sorted(_LAZY)
