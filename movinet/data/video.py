"""Video files: listing labelled folders and CSVs, decoding with PyAV, and a decoded-clip cache.

A video is decoded once into uint8 frames [n, h, w, 3]: temporally subsampled to the model's
frame rate (every ``stride``-th frame, or resampled to ``fps``) and resized so that its short
side is ``short_side`` pixels. Clips and crops are then cut from that array by the pipeline, so
the cache can hold it and later epochs and search trials never decode again.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import difflib
import hashlib
import os
import threading
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from movinet.data.errors import DataError, LabelWarning, SkippedFiles

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")

Item = tuple[str, int]   # (video path, class index)
MISSPELLING_MIN_ROWS = 3   # a one-row class beside a class of this many rows is taken for a typo


class VideoError(Exception):
    """One file cannot be decoded; the pipeline skips it and counts it."""


@dataclasses.dataclass(frozen=True)
class DecodeParams:
    short_side: int
    stride: int = 1
    fps: float | None = None

    def key(self) -> str:
        rate = f"fps{self.fps:g}" if self.fps else f"stride{self.stride}"
        return f"short{self.short_side}-{rate}"


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def scan_class_folder(root: str | os.PathLike,
                      class_names: Sequence[str] | None = None) -> tuple[list[Item], list[str]]:
    """Videos of a folder with one sub-folder per class (the UCF101 layout), searched recursively.

    With ``class_names`` (those of the training folder) a sub-folder of another name is an error;
    without, the classes are the sorted names of the sub-folders that hold at least one video.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    found = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        videos = sorted(str(p) for p in class_dir.rglob("*") if is_video(p))
        if videos:
            found[class_dir.name] = videos
    if not found:
        raise DataError(f"{root}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in any class sub-folder")
    if class_names is None:
        class_names = sorted(found)
        if len(class_names) < 2:
            raise DataError(f"{root}: only one class ({class_names[0]!r}); a classifier needs at "
                            "least two class sub-folders")
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise DataError(f"{root}: class folder(s) {unknown} are not among the training classes")
    index = {name: i for i, name in enumerate(class_names)}
    items = [(path, index[name]) for name, paths in found.items() for path in paths]
    return items, list(class_names)


def read_label_csv(csv_path: str | os.PathLike,
                   class_names: Sequence[str] | None = None) -> tuple[list[Item], list[str]]:
    """Rows of ``path,label``; an optional header row starts with ``path``.

    Relative paths are relative to the CSV's folder. Labels are class names, or class indices when
    every label of the file is an integer. With ``class_names`` (those of the training CSV), a label
    outside them is an error; without, the classes are the sorted distinct names (or 0..max index).

    A row with an empty label is an error. Without ``class_names``, a class name that labels a
    single row while another labels ``MISSPELLING_MIN_ROWS`` or more is most likely a misspelling
    (a real class has more than one example): it still makes a class, with a ``LabelWarning``
    naming the file, the row and the nearest other name.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such CSV file")
    rows = []
    with open(csv_path, newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if line == 1 and row[0].strip().lower() == "path":
                continue
            if len(row) < 2:
                raise DataError(f"{csv_path}:{line}: expected 'path,label', got {','.join(row)!r}")
            if not row[1].strip():
                raise DataError(f"{csv_path}:{line}: empty label for {row[0].strip()!r}")
            path = Path(row[0].strip())
            rows.append((line, str(path if path.is_absolute() else csv_path.parent / path), row[1].strip()))
    if not rows:
        raise DataError(f"{csv_path}: no rows of 'path,label'")

    numeric = all(_is_int(label) for _, _, label in rows)
    if class_names is None:
        if numeric:
            class_names = [str(i) for i in range(max(int(label) for _, _, label in rows) + 1)]
        else:
            class_names = sorted({label for _, _, label in rows})
        if len({label for _, _, label in rows}) < 2:
            raise DataError(f"{csv_path}: only one class ({rows[0][2]!r}); a classifier needs at least two")
        if not numeric:
            _warn_of_single_row_labels(csv_path, rows)
    index = {name: i for i, name in enumerate(class_names)}
    items = []
    for line, path, label in rows:
        if numeric and label not in index:
            label_index = int(label)
            if not 0 <= label_index < len(class_names):
                raise DataError(f"{csv_path}:{line}: label {label_index} is outside the "
                                f"{len(class_names)} classes")
        elif label in index:
            label_index = index[label]
        else:
            raise DataError(f"{csv_path}:{line}: unknown label {label!r}; the classes are "
                            f"{_shorten(class_names)}")
        items.append((path, label_index))
    return items, list(class_names)


def _warn_of_single_row_labels(csv_path: Path, rows: Sequence[tuple[int, str, str]]) -> None:
    counts = collections.Counter(label for _, _, label in rows)
    if max(counts.values()) < MISSPELLING_MIN_ROWS:
        return
    for line, _, label in rows:
        if counts[label] == 1:
            others = [name for name in counts if name != label]
            nearest = difflib.get_close_matches(label, others, n=1, cutoff=0.0)
            warnings.warn(f"{csv_path}:{line}: label {label!r} labels this row only; a misspelling of "
                          f"{nearest[0]!r}?", LabelWarning, stacklevel=3)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _shorten(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"


def split_items(items: Sequence[Item], val_fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """A deterministic split that keeps each class's share: ``val_fraction`` of each class."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted({label for _, label in items}):
        members = sorted(path for path, item_label in items if item_label == label)
        order = rng.permutation(len(members))
        num_val = int(round(len(members) * val_fraction)) if len(members) > 1 else 0
        val += [(members[i], label) for i in order[:num_val]]
        train += [(members[i], label) for i in order[num_val:]]
    return train, val


def decode_video(path: str, params: DecodeParams) -> np.ndarray:
    """uint8 frames [n, h, w, 3] at the target rate, short side ``params.short_side``.

    Raises:
      VideoError: the file is unreadable, has no video stream or no decodable frame, or fewer
        frames decode than its container lists (a truncated file).
    """
    import av   # here, not at the top: trainings on synthetic or TFRecord data never load PyAV (~0.26 s)

    images = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            pick = _fps_picker(params.fps, float(rate) if rate else None) if params.fps else (
                lambda index, time: int(index % params.stride == 0))
            size = None
            decoded = 0
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                repeats = pick(index, frame.time)
                if repeats:
                    size = size or _resized(frame.width, frame.height, params.short_side)
                    image = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                    images.extend([image] * repeats)
            # A file cut short behind an index at its front (mp4 "faststart") decodes without an
            # error, threaded decoding swallowing it: only the index's frame count tells.
            if decoded < stream.frames:
                raise VideoError(f"truncated: {decoded} of the {stream.frames} frames its index lists decode")
    except av.FFmpegError as err:
        raise VideoError(f"cannot decode ({type(err).__name__}: {err})") from None
    if not images:
        raise VideoError("no decodable video frames")
    return np.stack(images)


def _fps_picker(fps: float, source_fps: float | None) -> Callable[[int, float | None], int]:
    """How many output frames each source frame fills when resampling to ``fps``.

    Output frame k shows the source frame nearest to time k / fps, so slower sources repeat
    frames and faster ones drop them.
    """
    tolerance = 0.5 / source_fps if source_fps else 0.0
    state = {"start": None, "next": 0}

    def pick(index: int, time: float | None) -> int:
        if time is None:
            if not source_fps:
                raise VideoError("neither frame times nor a frame rate to resample by")
            time = index / source_fps
        if state["start"] is None:
            state["start"] = time
        elapsed = time - state["start"]
        repeats = 0
        while state["next"] / fps <= elapsed + tolerance:
            repeats += 1
            state["next"] += 1
        return repeats

    return pick


def _resized(width: int, height: int, short_side: int) -> tuple[int, int]:
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class VideoReader:
    """Decodes videos for the pipeline: cached, and never raising for a bad file.

    A file that cannot be decoded is recorded in ``skipped`` (with a warning) and read as None. With
    ``cache_dir``, decoded frames are kept as ``.npy`` files named by a hash of the path, its
    modification time and size, and the decode parameters; a failure is kept as a ``.bad`` file.
    """

    def __init__(self, params: DecodeParams, cache_dir: str | os.PathLike | None = None,
                 skipped: SkippedFiles | None = None):
        self.params = params
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.skipped = skipped if skipped is not None else SkippedFiles()
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, path: str) -> np.ndarray | None:
        if path in self.skipped:
            return None
        entry = self._cache_entry(path)
        if entry is not None:
            if entry.with_suffix(".npy").exists():
                return np.load(entry.with_suffix(".npy"))
            if entry.with_suffix(".bad").exists():
                self.skipped.add(path, entry.with_suffix(".bad").read_text())
                return None
        try:
            frames = decode_video(path, self.params)
        # A bad file must never stop an epoch, whatever the decoder raises.
        except Exception as err:  # noqa: BLE001
            reason = str(err) if isinstance(err, VideoError) else f"{type(err).__name__}: {err}"
            self.skipped.add(path, reason)
            if entry is not None and os.path.exists(path):
                _write_atomic(entry.with_suffix(".bad"), lambda f: f.write(reason.encode()))
            return None
        if entry is not None:
            _write_atomic(entry.with_suffix(".npy"), lambda f: np.save(f, frames))
        return frames

    def _cache_entry(self, path: str) -> Path | None:
        if self.cache_dir is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        key = f"{os.path.abspath(path)}|{stat.st_mtime_ns}|{stat.st_size}|{self.params.key()}"
        return self.cache_dir / hashlib.sha1(key.encode()).hexdigest()


def _write_atomic(path: Path, write: Callable) -> None:
    """Writes through a temporary file, so parallel readers never see a partial file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(temporary, "wb") as handle:
        write(handle)
    os.replace(temporary, path)
