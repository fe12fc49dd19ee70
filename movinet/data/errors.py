"""What can go wrong with training data: fatal errors and files skipped along the way."""

from __future__ import annotations

import threading
import warnings


class DataError(ValueError):
    """Data that cannot be used at all; the one-line message names the source and the fix."""


class LabelWarning(UserWarning):
    """A label that is likely a mistake (used by one row only); it still makes a class."""


class SkippedVideoWarning(UserWarning):
    """A video file could not be decoded and was left out of the epoch."""


class SkippedFiles:
    """A thread-safe record of files left out because they could not be read.

    Decoding runs on tf.data worker threads, so the record is shared and locked. Each file is
    warned about once; later epochs skip it silently and it is counted once.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._reasons: dict[str, str] = {}

    def add(self, path: str, reason: str) -> None:
        with self._lock:
            if path in self._reasons:
                return
            self._reasons[path] = reason
        warnings.warn(f"skipping {path}: {reason}", SkippedVideoWarning, stacklevel=2)

    def __contains__(self, path: str) -> bool:
        with self._lock:
            return path in self._reasons

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._reasons)

    @property
    def reasons(self) -> dict[str, str]:
        with self._lock:
            return dict(self._reasons)
