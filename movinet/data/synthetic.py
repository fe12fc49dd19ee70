"""A synthetic motion dataset whose classes differ only over time.

Each clip shows one bright shape (a disk or a square) of random size and colour on a noisy
background of random tone. The shape moves in a straight line at a random speed; the class is
the direction of motion (``num_classes`` directions evenly spaced on the circle). The frame is a
torus: the shape leaves one edge and comes back at the other, so its position in any frame is
uniform whatever the class. A single frame therefore carries no class information, while two
frames together give it away: a model solves the task only by looking across time, which is
what a temporal kernel of 1 cannot do.

Every clip is a pure function of ``(seed, split, index)``, so any subset can be rendered on its
own, in any order, in parallel, and the first ``n`` clips never depend on how many follow.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test")

SHAPES = ("disk", "square")
SIZE_RANGE = (0.08, 0.16)     # shape radius as a fraction of the resolution
SPEED_RANGE = (0.06, 0.12)    # displacement per frame as a fraction of the resolution
BACKGROUND_RANGE = (0.0, 0.35)
FOREGROUND_RANGE = (0.6, 1.0)
NOISE_STD = 0.08


def clip_label(index: int, num_classes: int) -> int:
    """Labels cycle through the classes, so every prefix of the set is balanced."""
    return index % num_classes


def render_clip(index: int, frames: int, resolution: int, num_classes: int = 4, seed: int = 0,
                split: str = "train") -> np.ndarray:
    """One clip, uint8 [frames, resolution, resolution, 3]; its label is ``clip_label(index)``."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {list(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    label = clip_label(index, num_classes)
    angle = 2.0 * np.pi * label / num_classes
    speed = rng.uniform(*SPEED_RANGE) * resolution
    radius = rng.uniform(*SIZE_RANGE) * resolution
    start = rng.uniform(0.0, resolution, size=2)
    shape = SHAPES[rng.integers(len(SHAPES))]
    background = rng.uniform(*BACKGROUND_RANGE, size=3).astype(np.float32)
    foreground = rng.uniform(*FOREGROUND_RANGE, size=3).astype(np.float32)

    # Image rows grow downwards, so "up" (angle pi/2) is a negative row velocity.
    velocity = speed * np.array([-np.sin(angle), np.cos(angle)])
    centres = start + np.arange(frames)[:, None] * velocity           # [T, 2] (row, col)
    grid = np.arange(resolution) + 0.5
    offset_row = _wrapped(grid[None, :] - centres[:, :1], resolution)  # [T, H]
    offset_col = _wrapped(grid[None, :] - centres[:, 1:], resolution)  # [T, W]
    if shape == "disk":
        distance = np.hypot(offset_row[:, :, None], offset_col[:, None, :])
    else:
        distance = np.maximum(np.abs(offset_row)[:, :, None], np.abs(offset_col)[:, None, :])
    # A one-pixel soft edge keeps sub-pixel motion visible.
    alpha = np.clip(radius + 0.5 - distance, 0.0, 1.0).astype(np.float32)[..., None]

    noise = rng.standard_normal((frames, resolution, resolution, 3), dtype=np.float32) * NOISE_STD
    clip = (1.0 - alpha) * (background + noise) + alpha * foreground
    return np.round(np.clip(clip, 0.0, 1.0) * 255.0).astype(np.uint8)


def _wrapped(offset: np.ndarray, period: float) -> np.ndarray:
    """The signed offset on a circle of length ``period``, in [-period/2, period/2)."""
    return (offset + period / 2.0) % period - period / 2.0


def synthetic_motion(num_clips: int, frames: int, resolution: int, num_classes: int = 4,
                     seed: int = 0, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_clips`` clips of a split.

    Returns:
      videos: float32 [num_clips, frames, resolution, resolution, 3] in [0, 1].
      labels: int32 [num_clips], the direction index of each clip.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a motion dataset needs at least 2 directions")
    videos = np.empty((num_clips, frames, resolution, resolution, 3), np.float32)
    for index in range(num_clips):
        videos[index] = render_clip(index, frames, resolution, num_classes, seed, split)
    videos /= 255.0
    labels = np.array([clip_label(i, num_classes) for i in range(num_clips)], np.int32)
    return videos, labels
