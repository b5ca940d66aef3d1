"""``--smooth S``: each prompt's probability map averaged over time, the past's pull limited, restarted at scene cuts.

    s_0 = p_0,   s_t = p_t + clip(S * (s_{t-1} - p_t), -PULL, PULL)

Without the clip this is the exponential moving average (1 - S) * p_t + S * s_{t-1}: S is the
weight of the past (0 turns smoothing off). Sensor noise moves a map by much less than `PULL`, so it
is averaged as by that average (its variance shrinks by (1 - S) / (1 + S) and what is left changes
slowly); a moving object changes its pixels' probabilities by much more, so its map follows at once,
at most `PULL` away from the frame's own: an average alone would trail by S / (1 - S) frames. A
scene cut (the frame's coarse grey picture moves by more than `SCENE_CUT` of the scale from the last
frame's) restarts the average, so one shot never bleeds into the next. The masks are then made from
s exactly as from p (`clipseg_cli.postprocess.mask_and_map`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from clipseg_cli.errors import ClipSegError

PULL = 0.25  # the most the past may move a map from the frame's own probability
SCENE_CUT = 0.12  # mean absolute difference of the coarse grey pictures, as a fraction of 255
_GRID = 16  # the coarse picture: at most 16x16 cells


@dataclass
class Smoother:
    """The running average of one video's maps, one per target, and the last frame's coarse picture.

    strength: S, the weight of the past, in [0, 1).
    """

    strength: float
    maps: list[np.ndarray] | None = None
    picture: np.ndarray | None = None
    cuts: list[int] = field(default_factory=list)  # frames where the average restarted (after the first)

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength < 1.0:
            raise ClipSegError(f"--smooth {self.strength}: give a number from 0 (off) to below 1, e.g. 0.5")

    def __call__(self, index: int, rgb: np.ndarray, maps: list[np.ndarray]) -> list[np.ndarray]:
        """Smooth one frame's maps.

        Arguments:
            index: the frame's number (for `cuts`).
            rgb: HxWx3 uint8, the frame (for scene cuts).
            maps: HxW float32, one per target.

        Returns:
            The smoothed maps (new arrays; the average's state).
        """
        picture = coarse(rgb)
        cut = self.picture is not None and float(np.abs(picture - self.picture).mean()) > SCENE_CUT * 255
        if cut:
            self.cuts.append(index)
        self.picture = picture
        if self.maps is None or cut:
            self.maps = [np.array(m, dtype=np.float32) for m in maps]
        else:
            past, pull = np.float32(self.strength), np.float32(PULL)
            self.maps = [m + np.clip(past * (s - m), -pull, pull) for m, s in zip(maps, self.maps, strict=True)]
        return self.maps

    def state(self) -> dict[str, np.ndarray]:
        """Returns: the state as arrays (to resume a run), empty before the first frame."""
        if self.maps is None or self.picture is None:
            return {}
        return {"picture": self.picture, **{f"map{i}": m for i, m in enumerate(self.maps)}}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Continue from a `state`."""
        if not state:
            return
        self.picture = np.asarray(state["picture"], dtype=np.float32)
        self.maps = [np.asarray(state[f"map{i}"], dtype=np.float32) for i in range(len(state) - 1)]


def coarse(rgb: np.ndarray) -> np.ndarray:
    """Returns: the frame's grey level averaged over a grid of at most 16x16 cells (float32)."""
    grey = rgb.astype(np.float32).mean(axis=2)
    height, width = grey.shape
    rows = np.array_split(np.arange(height), min(_GRID, height))
    cols = np.array_split(np.arange(width), min(_GRID, width))
    return np.array([[grey[r[0] : r[-1] + 1, c[0] : c[-1] + 1].mean() for c in cols] for r in rows], np.float32)


def flicker(masks: list[np.ndarray]) -> float:
    """The mean fraction of mask pixels that change between consecutive frames (pixels in either frame's mask).

    Returns:
        0 for a still mask; 0 when fewer than two frames, or no mask pixel at all.
    """
    changes = []
    for before, after in pairwise(masks):
        union = np.logical_or(before, after).sum()
        if union:
            changes.append(np.logical_xor(before, after).sum() / union)
    return float(np.mean(changes)) if changes else 0.0
