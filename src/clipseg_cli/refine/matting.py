"""Alpha matting at the object's rim: a trimap from the refined map, pymatting's solver, clean colours.

Steps, for an HxW image:
1. the map is refined with the guided filter (`guided.guided_refine`, with the gentler ``CUT_*`` settings)
   and cut at 0.5;
2. trimap: sure foreground (the cut eroded by the band), sure background (outside the cut dilated
   by the band, where the coarse map is also at most ``SURE_BACKGROUND``), and unknown between:
   a band ``BAND`` of the longest side wide on each side of the cut, plus wherever the map responded
   weakly but not nil. A leg or a tail narrower than one of CLIPSeg's patches shows in the map only
   as a faint response below 0.5; declaring it background would lose it, leaving it unknown lets the
   solver decide it by colour;
3. alpha is solved in the band's bounding box only, reduced so that the box holds at most
   ``SOLVE_PIXELS`` pixels (pymatting's closed-form matting, Levin, Lischinski & Weiss 2008);
4. the solved alpha is brought back to full size with the guided filter (the full-size crop as
   guide), so hairs thinner than the reduced pixels keep their edges, and is set to 1 and 0 in
   the sure regions;
5. the foreground colours in the band are estimated (pymatting's multilevel `estimate_foreground_ml`,
   Germer et al. 2020) so that a cut-out carries no fringe of the old background.

pymatting is an optional dependency (``pip install clipseg-cli[matting]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipseg_cli.errors import ClipSegError
from clipseg_cli.refine.guided import guided_refine, guided_upsample

# Half-width of the unknown band, as a fraction of the image's longest side.
BAND = 1 / 120
# The guided filter that places the cut: gentler than `guided`'s defaults (measured better for the trimap).
CUT_RADIUS, CUT_EPS, CUT_PASSES = 7, 1e-3, 2
# Sure background needs the coarse map at most this (CLIPSeg's background response is near 0; a part
# narrower than a patch still raises it a little).
SURE_BACKGROUND = 0.1
# The band's bounding box is reduced to at most this many pixels before solving.
SOLVE_PIXELS = 25_000
# Guided upsampling of the solved alpha: radius in reduced pixels, regularisation.
UPSAMPLE_RADIUS = 4
UPSAMPLE_EPS = 1e-5


def _quiet_ichol(matrix):
    """pymatting's incomplete Cholesky preconditioner, without its print() to stdout.

    When the first diagonal shift fails, ichol prints a PERFORMANCE WARNING on stdout and retries
    with the next; stdout carries our ``--json`` lines, so the module's print is sent to nowhere.
    """
    import importlib

    module = importlib.import_module("pymatting.preconditioner.ichol")  # the package re-exports the function
    module.print = _discard  # a module-level name: shadows the builtin in that module only
    return module.ichol(matrix)


def _discard(*args, **kwargs) -> None:
    return None


@dataclass
class Matte:
    """The result of matting one map.

    alpha: HxW float32 in [0, 1].
    foreground: HxWx3 uint8, the image with the estimated foreground
    colours in the unknown band (equal to the image elsewhere).
    """

    alpha: np.ndarray
    foreground: np.ndarray


def require_pymatting() -> None:
    """Raise a one-line ClipSegError when pymatting is missing (``--refine matting`` needs it)."""
    try:
        import pymatting  # noqa: F401
    except ImportError as exc:
        raise ClipSegError("--refine matting needs pymatting, which is not installed; "
                           "install it with: pip install 'clipseg-cli[matting]'") from exc


def matte(image: np.ndarray, prob: np.ndarray, *, band: float = BAND, solve_pixels: int = SOLVE_PIXELS,
          sure_background: float = SURE_BACKGROUND) -> Matte:
    """Alpha and foreground colours of the object a probability map roughly marks.

    Arguments:
        image: HxWx3 uint8 RGB.
        prob: HxW float32 probabilities in [0, 1].
        band: half-width of the unknown band as a fraction of the longest side.
        solve_pixels: the most pixels the solver works on (the band's box is reduced to fit).
        sure_background: the highest coarse probability that may count as sure background.

    Returns:
        A Matte.
    """
    require_pymatting()
    import cv2

    h, w = prob.shape
    guided = guided_refine(image, prob, radius=CUT_RADIUS, eps=CUT_EPS, passes=CUT_PASSES)
    inside = guided >= 0.5
    width = max(1, round(band * max(h, w)))
    # sure: farther than the band from the cut (distance transforms: time linear in pixels, any width)
    sure_fg = cv2.distanceTransform(inside.view(np.uint8), cv2.DIST_L2, 3) > width
    sure_bg = cv2.distanceTransform((~inside).view(np.uint8), cv2.DIST_L2, 3) > width
    sure_bg &= prob <= sure_background  # a faint response (a thin part) is left to the solver
    alpha = sure_fg.astype(np.float32)
    foreground = image.copy()
    unknown = ~(sure_fg | sure_bg)
    if not unknown.any() or not sure_fg.any() or not sure_bg.any():  # nothing to solve, or nothing to solve from
        return Matte(np.where(unknown, guided, alpha), foreground)
    rows, cols = np.flatnonzero(unknown.any(axis=1)), np.flatnonzero(unknown.any(axis=0))
    y0, y1 = max(0, rows[0] - width), min(h, rows[-1] + 1 + width)
    x0, x1 = max(0, cols[0] - width), min(w, cols[-1] + 1 + width)
    box = (slice(y0, y1), slice(x0, x1))
    solved = _solve(image[box], sure_fg[box], sure_bg[box], solve_pixels)
    if solved is None:  # not solvable at the reduced size: the guided map is the best estimate
        return Matte(np.where(unknown, guided, alpha), foreground)
    solved, colours = solved
    band_pixels = unknown[box]
    alpha[box][band_pixels] = solved[band_pixels]
    foreground[box][band_pixels] = colours[band_pixels]
    return Matte(alpha, foreground)


def _solve(crop: np.ndarray, sure_fg: np.ndarray, sure_bg: np.ndarray, solve_pixels: int
           ) -> tuple[np.ndarray, np.ndarray] | None:
    """Closed-form alpha and foreground colours of a crop, solved at reduced size when it is large.

    Arguments:
        crop: hxwx3 uint8. sure_fg, sure_bg: hxw bool.

    Returns:
        (hxw float32 alpha, hxwx3 uint8 foreground colours), or None when the reduced trimap has
        no sure foreground or no sure background, the crop is under 3 pixels on a side, or the
        solver's preconditioner fails.
    """
    import cv2
    from pymatting import estimate_alpha_cf, estimate_foreground_ml

    h, w = sure_fg.shape
    scale = min(1.0, (solve_pixels / (h * w)) ** 0.5)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA) if scale < 1 else crop
    trimap = np.full((h, w), 0.5, np.float32)
    trimap[sure_fg], trimap[sure_bg] = 1.0, 0.0
    if scale < 1:  # a reduced pixel is sure only where all it covers is
        reduced = cv2.resize(trimap, size, interpolation=cv2.INTER_AREA)
        trimap = np.where(reduced >= 1 - 1e-6, np.float32(1), np.where(reduced <= 1e-6, np.float32(0), np.float32(0.5)))
    if not (trimap == 1).any() or not (trimap == 0).any():
        return None
    if min(size) < 3:  # no 3x3 window of the closed-form Laplacian fits: the solver divides by zero
        return None
    pixels = small.astype(np.float64) / 255
    try:
        alpha = estimate_alpha_cf(pixels, trimap.astype(np.float64), preconditioner=_quiet_ichol)
    except ValueError:  # ichol found the system not positive definite even with its largest shift
        return None
    alpha = np.clip(alpha, 0, 1).astype(np.float32)
    colours = estimate_foreground_ml(pixels, alpha.astype(np.float64))
    colours = np.clip(colours * 255 + 0.5, 0, 255).astype(np.uint8)
    if scale < 1:
        alpha = guided_upsample(crop, small, alpha, radius=UPSAMPLE_RADIUS, eps=UPSAMPLE_EPS)
        colours = cv2.resize(colours, (w, h), interpolation=cv2.INTER_LINEAR)
    return alpha, colours
