"""The data pipeline: image sources, captions, aspect buckets, the latent/text cache and the
training loader.

Entry points::

    report = build_cache(data_config, autoencoder, text_encoder, batch_size=4, world_size=1)
    print(report.summary())
    loader = make_loader(data_config, batch_size=4, rank=0, world_size=1)
    batch = next(loader)          # {"latents", "text", "text_mask", "loss_weight", "mask", "ids", ...}
    state = loader.state_dict()   # store in the checkpoint; loader.load_state_dict(state) resumes

``bucket_table`` / ``closest_bucket`` expose Sana's aspect-ratio tables for resolution binning.
"""

from sanakit.data.buckets import SANA_BASE_RESOLUTIONS, bucket_table, closest_bucket
from sanakit.data.cache import build_cache
from sanakit.data.encoders import AutoencoderLike, TextEncoderLike
from sanakit.data.loader import (
    Cache,
    CachedDataset,
    CacheLoader,
    check_dataset_size,
    make_loader,
    open_cache,
)
from sanakit.data.report import CacheReport
from sanakit.data.sources import SourceItem, discover

__all__ = [
    "SANA_BASE_RESOLUTIONS",
    "AutoencoderLike",
    "Cache",
    "CacheLoader",
    "CacheReport",
    "CachedDataset",
    "SourceItem",
    "TextEncoderLike",
    "bucket_table",
    "build_cache",
    "check_dataset_size",
    "closest_bucket",
    "discover",
    "make_loader",
    "open_cache",
]
