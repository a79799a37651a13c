"""FID and KID between generated images and a reference image folder, in a chosen feature space.

The statistics are torchmetrics': ``FrechetInceptionDistance`` (Heusel et al. 2017,
``||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))``) and ``KernelInceptionDistance``
(Binkowski et al. 2018, unbiased MMD^2 with the cubic polynomial kernel over random subsets).
Features are computed here and handed to the metrics through an identity feature module
(:class:`GivenFeatures`), so one extraction serves FID, KID and several runs:

- ``inception``: the standard FID network, torch-fidelity's TF-ported InceptionV3 pool features
  (N, 2048) through torchmetrics' ``NoTrainInceptionV3``, from the local weight file
  :data:`INCEPTION_FILE` (FID in the usual sense; needs the ``torch-fidelity`` package);
- ``clip``: a CLIP model's projected image embeddings (N, D) (FD in CLIP space, Kynkaanniemi et
  al. 2023, "The Role of ImageNet Classes in Frechet Inception Distance"); numbers are NOT
  comparable with published Inception FIDs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sanakit.errors import SanakitError
from sanakit.metrics.clip import ClipModel

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class FeatureSpace:
    """``extract(images) -> (N, D)`` features and the name reports give them."""

    name: str
    extract: Callable[[Sequence[Image.Image]], torch.Tensor]


def clip_features(clip: ClipModel, batch_size: int = 32) -> FeatureSpace:
    """CLIP image embeddings (:meth:`ClipModel.image_embeddings`) as FID/KID features."""
    return FeatureSpace(f"clip:{clip.path}", lambda ims: clip.image_embeddings(ims, batch_size))


def inception_features(path: str | Path, batch_size: int = 32) -> FeatureSpace:
    """The standard FID InceptionV3 from the local file ``path`` (:data:`INCEPTION_FILE`)."""
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / INCEPTION_FILE
    if not file.is_file():
        raise SanakitError(
            f"fid_model {file}: InceptionV3 weights not found; download {INCEPTION_URL} "
            "on a machine with internet and pass the file"
        )
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(file),
        )
    except ModuleNotFoundError as err:
        raise SanakitError(
            f"fid_model {file}: the InceptionV3 feature extractor needs torch-fidelity "
            "(pip install 'sanakit[eval]' torch-fidelity, with the torchvision that matches "
            "your torch)"
        ) from err

    @torch.inference_mode()
    def extract(images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), batch_size):
            chunk = [np.asarray(im.convert("RGB")) for im in images[start : start + batch_size]]
            # (B, 3, H, W) uint8; the network resizes to 299x299 itself
            batch = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).contiguous()
            out.append(net(batch).reshape(len(chunk), -1).double().cpu())
        return torch.cat(out)

    return FeatureSpace(f"inception:{file}", extract)


class GivenFeatures(torch.nn.Module):
    """The identity on (N, D) features, as the ``feature`` module of torchmetrics' FID/KID."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _require_torchmetrics() -> None:
    try:
        import torchmetrics  # noqa: F401
    except ModuleNotFoundError as err:
        raise SanakitError(
            "FID/KID need torchmetrics: pip install 'sanakit[eval]' (or torchmetrics)"
        ) from err


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance of (N, D) and (M, D) features (torchmetrics; N, M >= 2)."""
    _require_torchmetrics()
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise SanakitError(
            f"FID needs at least 2 images on each side, got {len(real)} reference and "
            f"{len(fake)} generated (and thousands to mean anything)"
        )
    metric = FrechetInceptionDistance(feature=GivenFeatures(real.shape[1]))
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of KID over ``subsets`` random subsets of ``min(subset_size, N, M)`` features
    (torchmetrics' ``KernelInceptionDistance``); the subsets are drawn from ``seed``."""
    _require_torchmetrics()
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise SanakitError("KID needs at least 2 images on each side")
    with warnings.catch_warnings():  # "will save all extracted features": that is the point
        warnings.filterwarnings("ignore", message=".*save all extracted features")
        metric = KernelInceptionDistance(
            feature=GivenFeatures(real.shape[1]), subsets=subsets, subset_size=size
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def fid_kid(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """``{"fid", "kid", "kid_std"}`` of two feature sets."""
    kid_mean, kid_std = kid(real, fake, seed=seed)
    return {"fid": fid(real, fake), "kid": kid_mean, "kid_std": kid_std}


def image_files(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted); a missing folder is an error."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise SanakitError(f"fid reference {root}: no such folder of reference images")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _read(path: Path) -> Image.Image | None:
    with contextlib.suppress(OSError, UnidentifiedImageError), Image.open(path) as im:
        return im.convert("RGB")
    return None


def _too_few(root: str | Path, count: int) -> SanakitError:
    return SanakitError(
        f"fid reference {Path(root).expanduser()}: {count} readable images; FID/KID need at "
        f"least 2 (and thousands to mean anything); put {', '.join(IMAGE_SUFFIXES)} files there"
    )


def read_image_folder(folder: str | Path, limit: int | None = None) -> list[Image.Image]:
    """The images of ``folder`` (sorted by path, recursively; at most ``limit``) as RGB.
    Unreadable files are skipped; fewer than 2 images is an error."""
    images = []
    for path in image_files(folder):
        if limit is not None and len(images) >= limit:
            break
        image = _read(path)
        if image is not None:
            images.append(image)
    if len(images) < 2:
        raise _too_few(folder, len(images))
    return images


def folder_features(
    folder: str | Path, space: FeatureSpace, limit: int | None = None, chunk: int = 256
) -> torch.Tensor:
    """(N, D) features of the images of ``folder`` (as :func:`read_image_folder`), read and
    extracted ``chunk`` images at a time so a large reference set never sits in memory."""
    out, images, count = [], [], 0
    for path in image_files(folder):
        if limit is not None and count >= limit:
            break
        image = _read(path)
        if image is None:
            continue
        images.append(image)
        count += 1
        if len(images) == chunk:
            out.append(space.extract(images))
            images = []
    if images:
        out.append(space.extract(images))
    if count < 2:
        raise _too_few(folder, count)
    return torch.cat(out)
