"""The MoViNet family: compound-scaled search spaces, named models A0-A6, ensembles.

Scaling, containment and the registry table need no TensorFlow; the ensemble classes are
imported on first use, as ``movinet`` does with its builder.
"""

import importlib as _importlib

from family.membership import contains, mismatches
from family.scaling import (Coefficients, Family, FamilyError, Member, load_family, scale_space,
                            target_macs, write_spaces)

_LAZY = {name: "family.ensemble" for name in ("Ensemble", "EnsembleError", "ResolutionEnsemble",
                                              "TemporalEnsemble")}


def __getattr__(name):
    if name in _LAZY:
        return getattr(_importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'family' has no attribute {name!r}")


__all__ = ["Coefficients", "Ensemble", "EnsembleError", "Family", "FamilyError", "Member", "ResolutionEnsemble",
           "TemporalEnsemble", "contains", "load_family", "mismatches", "scale_space", "target_macs",
           "write_spaces"]
