"""Pictures of a demo run, drawn with Pillow (matplotlib is not a dependency): the training
loss curve and the labelled sample grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from sanakit.train.validation import labelled_grid

PLOT_SIZE = (640, 360)
MARGINS = (56, 16, 20, 40)  # left, top, right, bottom (pixels)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (shorter at the start): out[i] = mean(v[max(0,
    i - window + 1) : i + 1]), shape (N,)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return v
    csum = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    span = max(hi - lo, 1e-12)
    raw = span / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    first = np.ceil(lo / step) * step
    return [float(t) for t in np.arange(first, hi + step * 1e-9, step)]


def loss_plot(steps: Sequence[int], losses: Sequence[float], title: str = "") -> Image.Image:
    """A 640x360 RGB chart of the per-step training loss (light blue) and its moving average
    over ~2% of the steps (dark blue), with step and loss axes. The loss axis reaches the
    larger of the moving average's peak and the raw losses' 99th percentile, so the start of
    the curve is drawn, not clipped. Empty input gives the axes."""
    width, height = PLOT_SIZE
    left, top, right, bottom = MARGINS
    image = Image.new("RGB", PLOT_SIZE, "white")
    draw = ImageDraw.Draw(image)
    x_max = max(1, max(steps, default=1))
    finite = [(s, v) for s, v in zip(steps, losses) if np.isfinite(v)]  # skipped steps: NaN
    values = [v for _, v in finite]
    smooth = moving_average(values, max(1, len(values) // 50))
    peak = max(float(np.quantile(values, 0.99)), float(smooth.max())) if values else 1.0
    y_max = max(peak * 1.05, 1e-6)

    def to_xy(step: float, value: float) -> tuple[float, float]:
        x = left + (width - left - right) * step / x_max
        y = height - bottom - (height - top - bottom) * min(value, y_max) / y_max
        return x, y

    for tick in _ticks(0.0, y_max):
        _, y = to_xy(0, tick)
        draw.line([(left, y), (width - right, y)], fill=(230, 230, 230))
        draw.text((4, y - 6), f"{tick:.3g}", fill="black")
    for tick in _ticks(0.0, float(x_max)):
        x, _ = to_xy(tick, 0)
        draw.line([(x, height - bottom), (x, height - bottom + 4)], fill="black")
        draw.text((x - 10, height - bottom + 6), f"{int(tick)}", fill="black")
    draw.line(
        [(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black"
    )
    draw.text((width // 2 - 16, height - 16), "step", fill="black")
    draw.text((left + 6, 2), title or "training loss (flow matching MSE)", fill="black")
    if len(finite) > 1:
        draw.line([to_xy(s, v) for s, v in finite], fill=(170, 200, 240), width=1)
        draw.line([to_xy(s, v) for (s, _), v in zip(finite, smooth)], fill=(20, 60, 160), width=2)
    return image


def sample_grid(
    rows: Sequence[Sequence[Image.Image]], labels: Sequence[str], scale: int = 3
) -> Image.Image:
    """One row per prompt (its label above it), the prompt's samples left to right, each
    enlarged ``scale`` x with nearest-neighbour so pixels stay visible."""
    columns = max(len(r) for r in rows)
    images, names = [], []
    for label, row in zip(labels, rows):
        for image in row:
            images.append(image.resize((image.width * scale, image.height * scale), Image.NEAREST))
            names.append(label)
    return labelled_grid(images, names, columns)
