"""Safe image decoding and the resize/crop/flip transform into bucket tensors.

Nothing here raises on bad input except :class:`BadImage`, whose ``reason`` goes into the cache
report: zero-byte files, non-images, truncated or corrupt data and decompression bombs are
rejected; CMYK, 16-bit, palette/alpha (composited on white) and EXIF-rotated images are fixed
and the fix is recorded.
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from sanakit.data.buckets import Geometry

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImage",
    "Probe",
    "decode_image",
    "decode_mask",
    "probe_image",
    "render_image",
    "render_mask",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Everything PIL can raise while reading a damaged or hostile file.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
    MemoryError,
)


class BadImage(Exception):
    """An image that cannot be used; ``reason`` is a short phrase for the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Probe(NamedTuple):
    """Header facts read without decoding pixels: oriented ``height``/``width`` and the fixes
    that decoding will apply (for the report)."""

    height: int
    width: int
    fixes: tuple[str, ...]


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise BadImage("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(f"decompression bomb: {err}") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except _DECODE_ERRORS as err:
        raise BadImage(f"corrupt or truncated image header: {err}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise BadImage(f"invalid size {w}x{h}")
    if w * h > max_pixels:
        raise BadImage(f"decompression bomb: {w}x{h} exceeds max_image_pixels = {max_pixels}")
    return img


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except _DECODE_ERRORS:
        return 1


def _fixes(img: Image.Image, orientation: int) -> tuple[str, ...]:
    fixes = []
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        fixes.append(f"applied EXIF orientation {orientation}")
    if img.mode == "CMYK":
        fixes.append("converted CMYK to RGB")
    elif img.mode in _SIXTEEN_BIT_MODES:
        fixes.append(f"reduced {img.mode} (16-bit) to 8-bit")
    elif img.mode == "F":
        fixes.append("converted float image to 8-bit")
    if img.mode in _ALPHA_MODES or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        fixes.append("composited transparency on white")
    return tuple(fixes)


def probe_image(data: bytes, max_pixels: int) -> Probe:
    """Reads the header of encoded image ``data``: size after EXIF orientation and the fixes
    :func:`decode_image` will apply. Raises :class:`BadImage` for zero-byte files, non-images
    and images over ``max_pixels`` (width x height)."""
    img = _open(data, max_pixels)
    orientation = _orientation(img)
    w, h = img.size
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: displayed size is transposed
        h, w = w, h
    return Probe(h, w, _fixes(img, orientation))


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if mode == "F" and arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0
        elif mode != "F":
            arr = arr * (255.0 / 65535.0)  # 16-bit full range -> 8-bit
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Fully decodes ``data`` to an 8-bit RGB image with EXIF orientation applied, CMYK and
    16-bit converted and transparency composited on white. Raises :class:`BadImage` (corrupt,
    truncated, bomb, not an image)."""
    img = _open(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(f"decompression bomb: {err}") from None
    except _DECODE_ERRORS as err:
        raise BadImage(f"corrupt or truncated image: {err}") from None


def decode_mask(data: bytes, max_pixels: int) -> Image.Image:
    """Decodes a loss mask to 8-bit grayscale ``L`` (white = train, black = ignore); alpha-only
    masks use their alpha channel. Raises :class:`BadImage`."""
    img = _open(data, max_pixels)
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        if img.mode in _ALPHA_MODES:
            return img.convert("RGBA").getchannel("A")
        return _to_rgb(img).convert("L")
    except _DECODE_ERRORS as err:
        raise BadImage(f"corrupt or truncated mask: {err}") from None


def _apply(img: Image.Image, geo: Geometry, flip: bool, resample: int) -> Image.Image:
    if img.size != (geo.resize_w, geo.resize_h):
        img = img.resize((geo.resize_w, geo.resize_h), resample)
    img = img.crop((geo.left, geo.top, geo.left + geo.bucket_w, geo.top + geo.bucket_h))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def render_image(img: Image.Image, geo: Geometry, flip: bool = False) -> torch.Tensor:
    """Resizes (LANCZOS, antialiased), crops and optionally mirrors an RGB image into a
    ``(3, bucket_h, bucket_w)`` float32 tensor in [-1, 1] (``x / 127.5 - 1``)."""
    out = _apply(img, geo, flip, Image.Resampling.LANCZOS)
    arr = torch.from_numpy(np.asarray(out, dtype=np.uint8).copy())  # (H, W, 3)
    return arr.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def render_mask(mask: Image.Image, geo: Geometry, flip: bool, factor: int) -> torch.Tensor:
    """Applies the image's geometry to its mask (bilinear), then averages ``factor x factor``
    cells (box filter) to the latent grid: ``(1, bucket_h / factor, bucket_w / factor)`` float32
    in [0, 1], the fraction of each latent cell that is trained."""
    out = _apply(mask, geo, flip, Image.Resampling.BILINEAR)
    out = out.resize((geo.bucket_w // factor, geo.bucket_h // factor), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0).unsqueeze(0)
