"""Batched encoding for the cache: images -> latents (autoencoder) and captions -> text
embeddings (text encoder), written into shards. Called by :func:`sanakit.data.build_cache`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from sanakit.data.buckets import Geometry
from sanakit.data.encoders import AutoencoderLike, TextEncoderLike
from sanakit.data.images import BadImage, decode_image, decode_mask, render_image, render_mask
from sanakit.data.report import CacheReport
from sanakit.data.store import ShardWriter
from sanakit.errors import SanakitError

__all__ = ["DTYPES", "LatentJob", "encode_latents", "encode_texts"]

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class LatentJob:
    """One image to encode: its readers, geometry and the ``(flip, key)`` entries to produce
    (the plain and/or mirrored orientation). ``name`` keys the failure dictionary."""

    name: str
    read: Callable[[], bytes]
    read_mask: Callable[[], bytes] | None
    geometry: Geometry
    outputs: list[tuple[bool, str]]


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _render(job: LatentJob, max_pixels: int, factor: int) -> list[Any] | str:
    """Decodes one image (and mask) and renders each requested orientation.
    Returns ``[(key, image (3, H, W), mask (1, H/f, W/f) | None)]`` or a failure reason."""
    try:
        img = decode_image(job.read(), max_pixels)
        mask = None
        if job.read_mask is not None:
            mask = decode_mask(job.read_mask(), max_pixels)
            if mask.size != img.size:
                return f"mask size {mask.size[0]}x{mask.size[1]} differs from image {img.size[0]}x{img.size[1]}"
    except BadImage as err:
        return err.reason
    except OSError as err:
        return f"unreadable file: {err.strerror or err}"
    geo = job.geometry
    return [
        (
            key,
            render_image(img, geo, flip),
            None if mask is None else render_mask(mask, geo, flip, factor),
        )
        for flip, key in job.outputs
    ]


def encode_latents(
    jobs: list[LatentJob],
    autoencoder: AutoencoderLike,
    writer: ShardWriter,
    *,
    batch_size: int,
    latent_dtype: str,
    max_pixels: int,
    num_workers: int,
    report: CacheReport,
    progress: bool,
) -> dict[str, str]:
    """Encodes ``jobs`` bucket by bucket (a batch never mixes bucket sizes) under ``no_grad``,
    decoding images on ``num_workers`` threads; stores ``{"latent": (C, h, w)}`` (plus
    ``"mask": (1, h, w)``) per key in ``latent_dtype``. Returns ``{job name: failure reason}``."""
    factor = int(autoencoder.downsample_factor)
    dtype = DTYPES[latent_dtype]
    failures: dict[str, str] = {}
    jobs = sorted(jobs, key=lambda j: (j.geometry.bucket_h, j.geometry.bucket_w, j.name))
    pending: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []

    def encode_pending(final: bool) -> None:
        while pending and (final or len(pending) >= batch_size):
            part = pending[:batch_size]
            del pending[:batch_size]
            images = torch.stack([p[1] for p in part])  # (B, 3, H, W) in [-1, 1]
            with torch.no_grad():
                latents = autoencoder.encode(
                    images.to(device=autoencoder.device, dtype=autoencoder.dtype)
                )
            report.encoder_calls["autoencoder"] += 1
            h, w = images.shape[2] // factor, images.shape[3] // factor
            expect = (len(part), int(autoencoder.latent_channels), h, w)
            if tuple(latents.shape) != expect:
                raise SanakitError(
                    f"autoencoder returned latents {tuple(latents.shape)}, expected {expect}"
                )
            latents = latents.detach().to("cpu", dtype)
            for (key, _, mask), latent in zip(part, latents):
                fields = {"latent": latent.clone()}  # clone: do not pin the whole batch
                if mask is not None:
                    fields["mask"] = mask
                writer.add(key, fields)
            report.encoded["latents"] += len(part)

    bucket: tuple[int, int] | None = None
    bar = tqdm(total=len(jobs), desc="latents", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        for chunk in _chunks(jobs, max(batch_size, 4 * max(1, num_workers))):
            results = list(pool.map(lambda j: _render(j, max_pixels, factor), chunk))
            for job, result in zip(chunk, results):
                bar.update(1)
                if isinstance(result, str):
                    failures[job.name] = result
                    continue
                if (job.geometry.bucket_h, job.geometry.bucket_w) != bucket:
                    encode_pending(final=True)
                    bucket = (job.geometry.bucket_h, job.geometry.bucket_w)
                pending.extend(result)
                encode_pending(final=False)
        encode_pending(final=True)
    bar.close()
    return failures


def encode_texts(
    todo: dict[str, str],
    empty_key: str | None,
    text_encoder: TextEncoderLike,
    writer: ShardWriter,
    *,
    batch_size: int,
    text_dtype: str,
    report: CacheReport,
    progress: bool,
) -> None:
    """Encodes captions ``{key: caption}`` in batches (and the empty prompt under
    ``empty_key`` when given); stores ``{"embeds": (L, D) text_dtype, "mask": (L,) int64}``."""
    dtype = DTYPES[text_dtype]
    length, hidden = int(text_encoder.max_length), int(text_encoder.hidden_size)

    def store(keys: list[str], embeds: torch.Tensor, mask: torch.Tensor) -> None:
        if tuple(embeds.shape) != (len(keys), length, hidden) or tuple(mask.shape) != (
            len(keys),
            length,
        ):
            raise SanakitError(
                f"text encoder returned embeds {tuple(embeds.shape)} and mask {tuple(mask.shape)}, "
                f"expected ({len(keys)}, {length}, {hidden}) and ({len(keys)}, {length})"
            )
        embeds = embeds.detach().to("cpu", dtype)
        mask = mask.detach().to("cpu", torch.int64)
        for key, e, m in zip(keys, embeds, mask):
            writer.add(key, {"embeds": e.clone(), "mask": m.clone()})
        report.encoded["texts"] += len(keys)

    items = list(todo.items())
    chunks = list(_chunks(items, batch_size))
    with torch.no_grad():
        for chunk in tqdm(chunks, desc="text", unit="batch", disable=not progress):
            embeds, mask = text_encoder.encode([caption for _, caption in chunk])
            report.encoder_calls["text"] += 1
            store([key for key, _ in chunk], embeds, mask)
        if empty_key is not None:
            embeds, mask = text_encoder.encode_empty(1)
            report.encoder_calls["text"] += 1
            store([empty_key], embeds, mask)
