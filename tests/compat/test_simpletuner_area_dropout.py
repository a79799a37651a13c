"""Issue 16, defects 5 and 6: SimpleTuner's ``resolution_type: "area"`` sizes (its area remap
table) and its ``caption_dropout_probability`` default, from the content of its own files."""

from __future__ import annotations

import pytest
from tests.compat.conftest import MINIMAL, write_tree

from sanakit.compat import import_config
from sanakit.data.buckets import target_bucket

# SimpleTuner's documentation/api/TUTORIAL.md multidatabackend example (image entry + its cache)
TUTORIAL = {
    "id": "pixart-camera",
    "type": "local",
    "dataset_type": "image",
    "instance_data_dir": "/data/datasets/pseudo-camera-10k",
    "caption_strategy": "filename",
    "resolution": 1.0,
    "resolution_type": "area",
    "minimum_image_size": 0.25,
    "maximum_image_size": 1.0,
    "target_downsample_size": 1.0,
    "cache_dir_vae": "/data/cache/vae/pixart/pseudo-camera-10k",
    "crop": True,
    "crop_style": "random",
    "crop_aspect": "square",
    "metadata_backend": "discovery",
}
EMBEDS = {
    "id": "pixart-text-embeds",
    "type": "local",
    "dataset_type": "text_embeds",
    "default": True,
    "cache_dir": "/data/cache/text/pixart/pseudo-camera-10k",
    "write_batch_size": 128,
}


def test_area_one_megapixel_trains_at_1024(root):
    """1.0 MP trains at 1024x1024 as in SimpleTuner (not sqrt(1e6) = 1000 -> 992); the size
    limits keep their area (0.25 MP = a 500 px edge, 1.0 MP = 1000 px)."""
    write_tree(root, MINIMAL, [TUTORIAL, EMBEDS])
    result = import_config("config/config.json")
    (ds,) = result.config.data.datasets
    assert (ds.resolution, ds.resolution_type) == (1024.0, "pixel_area")
    assert ds.minimum_image_size == pytest.approx(500.0)
    assert ds.maximum_image_size == pytest.approx(1000.0)
    assert ds.target_downsample_size == pytest.approx(1000.0)
    assert target_bucket(3000, 2000, ds) == (1024, 1024)  # crop_aspect square
    note = next(m for m in result.mapping if m.key.endswith("[0].resolution"))
    assert "1 MP = 1024x1024 (SimpleTuner's area remap table)" in str(note)


@pytest.mark.parametrize(
    ("mp", "edge"), [(0.25, 512), (0.5, 768), (1.0, 1024), (2.0, 1536), (4.0, 2048), (1.5, 1225)]
)
def test_area_remap_table(root, mp, edge):
    """SimpleTuner's table (training_sample.py _set_resolution): 0.5 / 1.0 / 2.0 MP -> 768 /
    1024 / 1536 px squares (sanakit gave 704 / 992 / 1408); other values sqrt(MP * 1e6)."""
    entry = {**TUTORIAL, "resolution": mp, "crop": False}
    del entry["maximum_image_size"], entry["target_downsample_size"]
    write_tree(root, MINIMAL, [entry, EMBEDS])
    (ds,) = import_config("config/config.json").config.data.datasets
    assert ds.resolution_type == "pixel_area"
    assert ds.resolution == pytest.approx(edge, abs=0.5)
    side = round(edge / 32) * 32
    assert target_bucket(edge, edge, ds) == (side, side)


def test_area_from_config_json(root):
    """config.json's --resolution / --resolution_type are the defaults of every entry."""
    entry = {k: v for k, v in TUTORIAL.items() if k not in ("resolution", "resolution_type")}
    config = {**MINIMAL, "--resolution": 0.5, "--resolution_type": "area"}
    write_tree(root, config, [entry, EMBEDS])
    (ds,) = import_config("config/config.json").config.data.datasets
    assert (ds.resolution, ds.resolution_type) == (768.0, "pixel_area")


def test_caption_dropout_default_is_simpletuners(root):
    """Left out everywhere: SimpleTuner's default 0.1 (its field registry registers the key in
    sections/data.py with None, then in sections/advanced.py with 0.1; the later one wins)."""
    write_tree(root, MINIMAL, [TUTORIAL, EMBEDS])
    result = import_config("config/config.json")
    (ds,) = result.config.data.datasets
    assert ds.caption_dropout == 0.1
    note = next(m for m in result.mapping if m.key.endswith("caption_dropout_probability"))
    assert "SimpleTuner's default 0.1" in str(note)


@pytest.mark.parametrize(
    ("config", "entry", "expected"),
    [
        ({"caption_dropout_probability": 0.05}, {}, 0.05),
        ({"--caption_dropout_probability": "0.0"}, {}, 0.0),
        ({"caption_dropout_probability": 0.05}, {"caption_dropout_probability": 0.2}, 0.2),
        ({}, {"caption_dropout_probability": 0}, 0.0),
    ],
)
def test_caption_dropout_given(root, config, entry, expected):
    """A value given in config.json or the entry is used as given (0 = off)."""
    write_tree(root, {**MINIMAL, **config}, [{**TUTORIAL, **entry}, EMBEDS])
    (ds,) = import_config("config/config.json").config.data.datasets
    assert ds.caption_dropout == expected
