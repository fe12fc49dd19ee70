"""What a search gives back: the folder it wrote and its rows, or the error that stopped it.

Shared by the multi-trial search (``search.run``) and the one-shot search (``search.oneshot``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path


class SearchError(RuntimeError):
    """A search that cannot start or continue; the message says why and what to do."""


@dataclasses.dataclass
class SearchResult:
    """What a search wrote, and ``timings``: the seconds of its phases in order, ``prepare`` (checks,
    sampler), the backend's (``ray_start``, ``trials`` on Ray), ``results``, then on Ray ``ray_stop``
    (what is left of Ray's shutdown, which runs while the results are written)."""

    folder: Path
    rows: list[dict]
    rejected: int
    written: dict[str, Path]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def best(self) -> Path | None:
        return self.written.get("best_spec.yaml")
