"""The MoViNet family: compound-scaled search spaces, named models A0-A6, ensembles."""

from family.ensemble import Ensemble, EnsembleError, ResolutionEnsemble, TemporalEnsemble
from family.membership import contains, mismatches
from family.scaling import (Coefficients, Family, FamilyError, Member, load_family, scale_space,
                            target_macs, write_spaces)

__all__ = ["Coefficients", "Ensemble", "EnsembleError", "Family", "FamilyError", "Member", "ResolutionEnsemble",
           "TemporalEnsemble", "contains", "load_family", "mismatches", "scale_space", "target_macs",
           "write_spaces"]
