"""Architecture search over MoViNet spaces: YAML spaces -> candidates -> Ray Tune / KerasTuner -> results."""

from search.candidate import Candidate, check_feasible, decode
from search.outcome import SearchError, SearchResult
from search.run import run_search
from search.space import SearchSpace, SpaceError, dump_space, load_space, space_from_dict, space_from_spec

__all__ = ["Candidate", "SearchError", "SearchResult", "SearchSpace", "SpaceError", "check_feasible", "decode",
           "dump_space", "load_space", "run_search", "space_from_dict", "space_from_spec"]
