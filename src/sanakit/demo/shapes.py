"""The demo's synthetic captioned dataset: one coloured shape on a plain background per image.

Every image is ``size`` x ``size`` RGB (32 by default) holding one filled shape (circle, square,
upright triangle) in one of the foreground colours, on a white, gray or black background, with
random size and position and a little background variation (a brightness offset and a faint
linear gradient). Its caption names all three: ``"a red circle on a white background"``.

The set is balanced (every colour x shape x background combination appears the same number of
times, ``per_combo``) and deterministic: the same seed gives byte-identical PNG files. Shapes are
rasterised at 4x and box-filtered down, so edges are anti-aliased; :func:`shape_mask` draws the
same geometry as a coverage map and the demo's classifier (:mod:`sanakit.demo.score`) uses it as
its templates.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sanakit.errors import SanakitError

# Foreground colours (RGB), far from each other and from every background (>= 110 in RGB).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 205, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (18, 18, 18),
}
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered to the final size (anti-aliasing)
MIN_FRACTION, MAX_FRACTION = 0.45, 0.65  # shape side as a fraction of the image side
JITTER = 0.07  # the shape's centre lies within +-7% of the image side from the image centre
MARGIN = 2  # pixels kept free along the border, so the border ring shows the background


@dataclass(frozen=True)
class ShapeSpec:
    """One image: what is drawn where. ``box`` = (x0, y0, x1, y1) in pixels (floats, exclusive
    right/bottom edge), always a square of side ``x1 - x0``."""

    color: str
    shape: str
    background: str
    box: tuple[float, float, float, float]
    brightness: float  # background offset in [-1, 1] (x 12 grey levels)
    gradient: tuple[float, float]  # background slope along (x, y) in [-1, 1] (x 8 levels)

    @property
    def caption(self) -> str:
        return caption(self.color, self.shape, self.background)


def caption(color: str, shape: str, background: str = "white") -> str:
    """``"a {color} {shape} on a {background} background"`` (the dataset's caption template)."""
    return f"a {color} {shape} on a {background} background"


def _polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":  # upright isosceles: apex at the top centre, base along the bottom
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    raise SanakitError(f"unknown demo shape {shape!r}; use one of {', '.join(SHAPES)}")


def shape_mask(
    shape: str, box: tuple[float, float, float, float], height: int, width: int
) -> np.ndarray:
    """Coverage (H, W) float32 in [0, 1] of ``shape`` filling ``box`` (pixel units): the
    fraction of each pixel inside the shape, estimated on a 4x4 sub-pixel grid."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (width * s, height * s), 0)
    draw = ImageDraw.Draw(canvas)
    big = tuple(v * s for v in box)
    if shape == "circle":
        # PIL's ellipse covers [x0, x1] inclusive; shrink by one sub-pixel for a half-open box.
        draw.ellipse((big[0], big[1], big[2] - 1, big[3] - 1), fill=255)
    else:
        draw.polygon(_polygon(shape, big), fill=255)
    small = canvas.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render(spec: ShapeSpec, size: int = 32) -> Image.Image:
    """The RGB image of ``spec``: background (base colour + brightness offset + gradient),
    then the shape blended in by its coverage (anti-aliased edges)."""
    base = np.asarray(BACKGROUNDS[spec.background], np.float32)
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    gx, gy = spec.gradient
    shade = 12.0 * spec.brightness + 8.0 * (gx * ramp[None, :] + gy * ramp[:, None])  # (H, W)
    background = base[None, None, :] + shade[..., None]  # (H, W, 3)
    cover = shape_mask(spec.shape, spec.box, size, size)[..., None]  # (H, W, 1)
    fg = np.asarray(COLORS[spec.color], np.float32)[None, None, :]
    image = background * (1.0 - cover) + fg * cover
    return Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8), "RGB")


def combinations() -> list[tuple[str, str, str]]:
    """Every (color, shape, background) triple, in a fixed order."""
    return list(itertools.product(COLORS, SHAPES, BACKGROUNDS))


def random_spec(
    rng: np.random.Generator, color: str, shape: str, background: str, size: int
) -> ShapeSpec:
    """A spec with a random side in [0.45, 0.65] x size, its centre uniform within +-0.07 x size
    of the image centre (and the box >= 2 px from the border); background brightness and
    gradient uniform in [-1, 1]."""
    side = float(rng.uniform(MIN_FRACTION, MAX_FRACTION) * size)
    lo = max(MARGIN, (size - side) / 2 - JITTER * size)
    hi = min(size - MARGIN - side, (size - side) / 2 + JITTER * size)
    x0, y0 = (float(v) for v in rng.uniform(lo, hi, 2))
    return ShapeSpec(
        color=color,
        shape=shape,
        background=background,
        box=(x0, y0, x0 + side, y0 + side),
        brightness=float(rng.uniform(-1, 1)),
        gradient=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
    )


def dataset_specs(per_combo: int, seed: int = 0, size: int = 32) -> list[ShapeSpec]:
    """``per_combo`` specs for each of the 4 x 3 x 3 combinations, interleaved (image i has
    combination i mod 36), all drawn from one ``numpy`` generator seeded ``seed``."""
    if per_combo < 1:
        raise SanakitError(f"demo dataset: per_combo must be >= 1, got {per_combo}")
    if size < 16:
        raise SanakitError(f"demo dataset: image size must be >= 16 pixels, got {size}")
    rng = np.random.default_rng(seed)
    combos = combinations()
    return [
        random_spec(rng, *combos[i % len(combos)], size) for i in range(per_combo * len(combos))
    ]


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding without metadata (deterministic for the same pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def iter_dataset(
    per_combo: int, seed: int = 0, size: int = 32
) -> Iterator[tuple[str, ShapeSpec, bytes]]:
    """(file stem, spec, PNG bytes) for every image of the dataset."""
    for i, spec in enumerate(dataset_specs(per_combo, seed, size)):
        yield f"shape-{i:05d}", spec, png_bytes(render(spec, size))


def _write_if_changed(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def write_dataset(folder: str | Path, per_combo: int, seed: int = 0, size: int = 32) -> int:
    """Writes ``folder/shape-NNNNN.png`` + ``.txt`` (the caption) for every image; files that
    already hold the right bytes are left alone (their mtimes stay, so the cache need not
    re-hash them). Stale ``shape-*`` files from a larger dataset are removed. Returns the
    number of images."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    keep: set[str] = set()
    for stem, spec, data in iter_dataset(per_combo, seed, size):
        _write_if_changed(root / f"{stem}.png", data)
        _write_if_changed(root / f"{stem}.txt", spec.caption.encode())
        keep |= {f"{stem}.png", f"{stem}.txt"}
    for path in root.glob("shape-*"):
        if path.name not in keep:
            path.unlink()
    return len(keep) // 2
