"""The demo's prompt-adherence judge: a small hand-written classifier of shape images.

For an RGB image (H, W, 3):

1. background colour b = per-channel median of the one-pixel border ring;
2. distance d(p) = ||rgb(p) - b||_2; foreground = {p : d(p) > max(48, 0.5 * q98(d))}, kept to
   its largest 8-connected component (stray pixels of a noisy sample are ignored);
3. colour = the palette colour nearest (Euclidean RGB) to most of the component's *core* pixels
   (d > 0.75 * q98(d)), i.e. the dominant foreground colour;
4. soft coverage c(p) = clip(d(p) / q98(d), 0, 1) on the component grown by one pixel (so the
   anti-aliased rim counts); shape = argmax over circle / square / triangle of the soft IoU
   sum(min(c, m)) / sum(max(c, m)) with m that shape's coverage
   (:func:`sanakit.demo.shapes.shape_mask`) in the square giving it the same area and centroid
   as c; background = the palette background nearest to b.

An image with no pixel farther than 48 from its background has no foreground: colour and shape
are ``None`` (counted as wrong). On the dataset's own images the classifier is exact; on noise
it is at chance (both are unit-tested).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sanakit.demo.shapes import BACKGROUNDS, COLORS, SHAPES, shape_mask

MIN_CONTRAST = 48.0  # RGB distance below which nothing counts as foreground


@dataclass(frozen=True)
class Prediction:
    """What the classifier sees: colour/shape are None when it finds no foreground."""

    color: str | None
    shape: str | None
    background: str
    foreground_pixels: int


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> np.ndarray:
    """Index into ``palette`` of the nearest colour for each row of ``rgb`` (N, 3)."""
    table = np.asarray(list(palette.values()), np.float32)  # (K, 3)
    return np.argmin(((rgb[:, None, :] - table[None]) ** 2).sum(-1), axis=1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean (H, W) mask (ties: first in raster
    order), as a boolean mask; all False when ``mask`` is empty."""
    height, width = mask.shape
    labels = np.zeros(mask.shape, np.int32)
    best, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = current
                        stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask, dtype=bool)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one pixel in the 8 directions (keeps the anti-aliased rim)."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + height, dx : dx + width]
    return out


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Soft IoU of two coverage maps: sum(min) / sum(max)."""
    union = np.maximum(a, b).sum()
    return float(np.minimum(a, b).sum() / union) if union else 0.0


# area of each shape in its bounding square of side 1, and its centroid's height in it
_AREA = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
_CENTROID_Y = {"circle": 0.5, "square": 0.5, "triangle": 2.0 / 3.0}


def _fitted_box(shape: str, cover: np.ndarray) -> tuple[float, float, float, float]:
    """The bounding square ``shape`` would need to have the same area (sum of coverage) and
    centroid as ``cover``: side = sqrt(area / unit_area); the triangle's centroid lies 2/3 of
    the way down from its apex."""
    area = float(cover.sum())
    ys, xs = np.indices(cover.shape)
    cx = float((cover * (xs + 0.5)).sum() / area)
    cy = float((cover * (ys + 0.5)).sum() / area)
    side = float(np.sqrt(area / _AREA[shape]))
    y0 = cy - _CENTROID_Y[shape] * side
    return (cx - side / 2, y0, cx + side / 2, y0 + side)


def classify(image: Image.Image | np.ndarray) -> Prediction:
    """Dominant foreground colour, shape and background of one image (see the module doc)."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    rgb = rgb.astype(np.float32)  # (H, W, 3)
    height, width, _ = rgb.shape
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])  # (2H + 2W - 4, 3)
    background = np.median(border, axis=0)
    bg_name = list(BACKGROUNDS)[int(_nearest(background[None], BACKGROUNDS)[0])]
    dist = np.linalg.norm(rgb - background, axis=-1)  # (H, W)
    peak = float(np.quantile(dist, 0.98))
    if peak <= MIN_CONTRAST:
        return Prediction(None, None, bg_name, 0)
    component = largest_component(dist > max(MIN_CONTRAST, 0.5 * peak))
    core = component & (dist > 0.75 * peak)
    if not core.any():
        core = component
    votes = np.bincount(_nearest(rgb[core], COLORS), minlength=len(COLORS))
    color = list(COLORS)[int(np.argmax(votes))]
    cover = np.clip(dist / peak, 0.0, 1.0) * _dilate(component)  # soft coverage (H, W)
    scores = [_soft_iou(cover, shape_mask(s, _fitted_box(s, cover), height, width)) for s in SHAPES]
    return Prediction(color, SHAPES[int(np.argmax(scores))], bg_name, int(component.sum()))


def score_predictions(
    items: Iterable[tuple[str, str, Prediction]],
) -> dict[str, float | int]:
    """Accuracy of predictions against (colour, shape) labels.

    Returns ``prompt_adherence`` (colour AND shape right), ``color_accuracy``,
    ``shape_accuracy`` (fractions in [0, 1]) and ``samples`` (the count)."""
    rows = [(p.color == c, p.shape == s) for c, s, p in items]
    n = len(rows)
    if not n:
        return {"prompt_adherence": 0.0, "color_accuracy": 0.0, "shape_accuracy": 0.0, "samples": 0}
    return {
        "prompt_adherence": sum(c and s for c, s in rows) / n,
        "color_accuracy": sum(c for c, _ in rows) / n,
        "shape_accuracy": sum(s for _, s in rows) / n,
        "samples": n,
    }
