"""The MoViNet family: compound-scaled search spaces, named models A0-A6, ensembles."""

from family.membership import contains, mismatches
from family.scaling import (Coefficients, Family, FamilyError, Member, load_family, scale_space,
                            target_macs, write_spaces)

__all__ = ["Coefficients", "Family", "FamilyError", "Member", "contains", "load_family", "mismatches",
           "scale_space", "target_macs", "write_spaces"]
