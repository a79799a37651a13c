"""Safe decoding (every bad-input kind) and the resize/crop/flip transform."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from sanakit.data.buckets import Geometry
from sanakit.data.images import (
    BadImage,
    decode_image,
    decode_mask,
    probe_image,
    render_image,
    render_mask,
)
from tests.data.fakes import noise_image

LIMIT = 89_478_485


def _encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_rgb_roundtrip_and_probe() -> None:
    img = noise_image(40, 30, seed=1)
    data = _encode(img)
    assert probe_image(data, LIMIT) == (30, 40, ())
    np.testing.assert_array_equal(np.asarray(decode_image(data, LIMIT)), np.asarray(img))


def test_cmyk_converted() -> None:
    cmyk = noise_image(16, 16, seed=2).convert("CMYK")
    data = _encode(cmyk, "JPEG", quality=95)
    assert "converted CMYK to RGB" in probe_image(data, LIMIT).fixes
    out = decode_image(data, LIMIT)
    assert out.mode == "RGB"
    ref = Image.open(io.BytesIO(data)).convert("RGB")
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_16_bit_reduced_to_8_bit() -> None:
    arr = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    data = _encode(Image.fromarray(arr))
    assert any("16-bit" in f for f in probe_image(data, LIMIT).fixes)
    out = np.asarray(decode_image(data, LIMIT))
    expect = np.clip(np.rint(arr * (255 / 65535)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expect)
    assert out[..., 0].max() == 255 and out[..., 0].min() == 0  # full range, not clipped at 255


def test_palette_with_transparency_composited_on_white() -> None:
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([200, 10, 10] + [10, 200, 10] + [0, 0, 0] * 254)
    pal.paste(1, (0, 0, 4, 8))  # left half index 1 (green), right half index 0 (red)
    data = _encode(pal, transparency=0)  # index 0 is transparent
    assert "composited transparency on white" in probe_image(data, LIMIT).fixes
    out = np.asarray(decode_image(data, LIMIT))
    assert (out[:, 4:] == 255).all()  # transparent -> white
    assert (out[:, :4] == [10, 200, 10]).all()


def test_alpha_blended_over_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    out = np.asarray(decode_image(_encode(rgba), LIMIT)).astype(int)
    # white * (1 - a) + black * a with a = 128/255 -> 127
    assert np.abs(out - 127).max() <= 1


def test_exif_orientation_applied() -> None:
    img = noise_image(40, 20, seed=3)  # stored 40 wide x 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW for display
    data = _encode(img, "JPEG", quality=100, exif=exif.tobytes())
    probe = probe_image(data, LIMIT)
    assert (probe.height, probe.width) == (40, 20)
    assert "applied EXIF orientation 6" in probe.fixes
    out = decode_image(data, LIMIT)
    assert out.size == (20, 40)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(out), np.rot90(stored, k=-1))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "zero-byte file"),
        (b"this is a text file, not an image", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),
        (png_header_bomb(30000, 30000), "decompression bomb"),
    ],
)
def test_bad_headers(data: bytes, reason: str) -> None:
    with pytest.raises(BadImage, match=reason):
        probe_image(data, LIMIT)
    with pytest.raises(BadImage, match=reason):
        decode_image(data, LIMIT)


def test_truncated_and_corrupt_fail_on_decode() -> None:
    good = _encode(noise_image(64, 64, seed=4), "JPEG")
    truncated = good[: len(good) // 2]
    probe_image(truncated, LIMIT)  # the header is intact
    with pytest.raises(BadImage, match="corrupt or truncated"):
        decode_image(truncated, LIMIT)
    png = _encode(noise_image(64, 64, seed=5))
    corrupt = png[:60] + bytes(b ^ 0xFF for b in png[60:200]) + png[200:]
    with pytest.raises(BadImage, match="corrupt or truncated"):
        decode_image(corrupt, LIMIT)


def test_own_pixel_limit() -> None:
    data = _encode(noise_image(50, 40))
    with pytest.raises(
        BadImage, match=r"decompression bomb: 50x40 exceeds max_image_pixels = 1999"
    ):
        probe_image(data, 1999)


def test_render_matches_pil_resize_crop_and_flip() -> None:
    img = noise_image(100, 60, seed=6)
    geo = Geometry(32, 64, 40, 67, 4, 2)
    out = render_image(img, geo)
    ref = img.resize((67, 40), Image.Resampling.LANCZOS).crop((2, 4, 66, 36))
    expect = torch.from_numpy(np.asarray(ref, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert out.shape == (3, 32, 64) and out.dtype == torch.float32
    torch.testing.assert_close(out, expect)
    torch.testing.assert_close(render_image(img, geo, flip=True), out.flip(-1))
    assert out.min() >= -1 and out.max() <= 1


def test_mask_pooled_to_latent_grid() -> None:
    mask = Image.new("L", (64, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # left quarter trained
    geo = Geometry(32, 64, 32, 64, 0, 0)
    out = render_mask(mask, geo, flip=False, factor=8)
    assert out.shape == (1, 4, 8)
    expect = torch.zeros(1, 4, 8)
    expect[..., :2] = 1.0
    torch.testing.assert_close(out, expect)
    torch.testing.assert_close(render_mask(mask, geo, flip=True, factor=8), expect.flip(-1))
    alpha = Image.new("LA", (8, 8), (0, 255))
    assert np.asarray(decode_mask(_encode(alpha), LIMIT)).min() == 255
