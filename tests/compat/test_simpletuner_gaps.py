"""SimpleTuner's own files import as they are (issue 16): fixtures from the content of its
DATALOADER.md / HUGGINGFACE_DATASETS.md / config examples; each asserts the mapped value or the
exact one-line reason."""

from __future__ import annotations

import pytest
from tests.compat.conftest import MINIMAL, write_tree

from sanakit.compat import import_config
from sanakit.errors import SanakitError

LOCAL = {
    "id": "something-special-to-remember-by",
    "type": "local",
    "instance_data_dir": "/path/to/data/tree",
    "crop": False,
    "resolution": 1024,
    "resolution_type": "pixel_area",
    "caption_strategy": "filename",
    "cache_dir_vae": "/path/to/vaecache",
    "repeats": 5,
}
# DATALOADER.md's multidatabackend example: an image backend and a text-embed cache on S3
AWS = {
    "id": "another-special-name-for-another-backend",
    "type": "aws",
    "aws_bucket_name": "something-yummy",
    "aws_region_name": None,
    "aws_endpoint_url": "https://foo.bar/",
    "aws_access_key_id": "wpz-764e9734523434",
    "aws_secret_access_key": "xyz-sdajkhfhakhfjd",
    "aws_data_prefix": "",
    "cache_dir_vae": "s3prefix/for/vaecache",
    "vae_cache_clear_each_epoch": True,
    "repeats": 2,
}
AWS_EMBEDS = {
    "id": "an example backend for text embeds.",
    "dataset_type": "text_embeds",
    "default": True,
    "type": "aws",
    "aws_bucket_name": "textembeds-something-yummy",
    "aws_region_name": None,
    "aws_endpoint_url": "https://foo.bar/",
    "aws_access_key_id": "wpz-764e9734523434",
    "aws_secret_access_key": "xyz-sdajkhfhakhfjd",
    "aws_data_prefix": "",
    "cache_dir": "",
}
LOCAL_EMBEDS = {
    "id": "alt-embed-cache",
    "dataset_type": "text_embeds",
    "default": False,
    "type": "local",
    "cache_dir": "/path/to/textembed_cache",
}
# HUGGINGFACE_DATASETS.md's basic configuration, and DATALOADER.md's CSV URL-list example
HF = {
    "id": "my-hf-dataset",
    "type": "huggingface",
    "dataset_name": "username/dataset-name",
    "split": "train",
    "caption_strategy": "huggingface",
    "metadata_backend": "huggingface",
    "caption_column": "text",
    "image_column": "image",
    "cache_dir": "cache/my-hf-dataset",
}
CSV = {
    "id": "csvtest",
    "type": "csv",
    "csv_caption_column": "caption",
    "csv_file": "/Volumes/ml/dataset/test_list.csv",
    "csv_cache_dir": "/Volumes/ml/cache/csv/test",
    "cache_dir_vae": "/Volumes/ml/cache/vae/sdxl",
    "caption_strategy": "csv",
    "crop": True,
    "crop_aspect": "square",
    "crop_style": "center",
    "resolution": 1024,
    "maximum_image_size": 1024,
    "target_downsample_size": 1024,
}
_WHY = (
    "sanakit reads local folders here; for other sources write a sanakit [[data.datasets]] "
    "(manifest/hf/webdataset)"
)


def test_backends_of_other_types_are_named_and_dropped(root) -> None:
    write_tree(root, MINIMAL, [LOCAL, AWS, AWS_EMBEDS, LOCAL_EMBEDS, HF, CSV])
    with pytest.raises(SanakitError) as err:
        import_config("config/config.json")
    first, *items = str(err.value).splitlines()
    assert "4 SimpleTuner settings are not supported" in first and "--allow-unsupported" in first
    assert items == [
        "  1. multidatabackend.json[1] (id 'another-special-name-for-another-backend'): "
        f"type 'aws' is not supported: {_WHY}",
        "  2. multidatabackend.json[2] (id 'an example backend for text embeds.'): type 'aws' "
        "is not supported: sanakit keeps its cache on a local disk (data.cache_dir)",
        f"  3. multidatabackend.json[4] (id 'my-hf-dataset'): type 'huggingface' is not "
        f"supported: {_WHY}",
        f"  4. multidatabackend.json[5] (id 'csvtest'): type 'csv' is not supported: {_WHY}",
    ]
    result = import_config("config/config.json", allow_unsupported=True)
    assert result.warnings == [
        "multidatabackend.json[1] (id 'another-special-name-for-another-backend'): type 'aws' "
        f"dropped: {_WHY}",
        "multidatabackend.json[2] (id 'an example backend for text embeds.'): type 'aws' "
        "dropped: sanakit keeps its cache on a local disk (data.cache_dir)",
        f"multidatabackend.json[4] (id 'my-hf-dataset'): type 'huggingface' dropped: {_WHY}",
        f"multidatabackend.json[5] (id 'csvtest'): type 'csv' dropped: {_WHY}",
    ]
    data = result.config.data
    assert [ds.id for ds in data.datasets] == ["something-special-to-remember-by"]
    assert data.cache_dir == "/path/to/sanakit"  # the local caches only (not the S3 ones)


def test_one_unsupported_backend_is_a_one_line_error(root) -> None:
    write_tree(root, MINIMAL, [LOCAL, AWS])
    with pytest.raises(SanakitError) as err:
        import_config("config/config.json")
    assert str(err.value) == (
        f"{root / 'config' / 'multidatabackend.json'}: multidatabackend.json[1] "
        f"(id 'another-special-name-for-another-backend'): type 'aws' is not supported: {_WHY}; "
        "remove it (or pass --allow-unsupported to drop it with a warning)"
    )


def test_backend_keys_of_another_type_and_typos_are_still_errors(root) -> None:
    write_tree(root, MINIMAL, [{**LOCAL, "aws_bucket_name": "b"}])
    with pytest.raises(SanakitError, match=r"\[0\]\.aws_bucket_name is a key of type 'aws' "):
        import_config("config/config.json")
    write_tree(root, MINIMAL, [LOCAL, {**AWS, "aws_bucket_nme": "b"}])
    with pytest.raises(SanakitError, match=r"aws_bucket_nme; did you mean 'aws_bucket_name'\?"):
        import_config("config/config.json")


def _mapping(result, key: str):
    (entry,) = [e for e in result.mapping if e.key == key]
    return entry


def test_polynomial_schedule_of_the_config_template(root) -> None:
    """config/config.json.example: polynomial, learning_rate "1e-4", lr_warmup_steps 100, no
    lr_end/lr_power: SimpleTuner's defaults 4e-7 and 0.8 are written out."""
    keys = {"--learning_rate": "1e-4", "--lr_scheduler": "polynomial", "--lr_warmup_steps": 100}
    write_tree(root, {**MINIMAL, **keys}, [LOCAL])
    result = import_config("config/config.json")
    t = result.config.train
    assert (t.lr_scheduler, t.lr, t.warmup_steps) == ("polynomial", 1e-4, 100)
    assert (t.lr_end, t.lr_power) == (4e-7, 0.8)
    assert _mapping(result, "lr_end").note == "SimpleTuner's default 4e-07"
    write_tree(root, {**MINIMAL, **keys, "lr_end": "1e-6", "--lr_power": 2}, [LOCAL])
    t = import_config("config/config.json").config.train
    assert (t.lr_scheduler, t.lr_end, t.lr_power) == ("polynomial", 1e-6, 2.0)


def test_lr_end_and_power_without_polynomial_are_ignored(root) -> None:
    keys = {"lr_scheduler": "linear", "lr_end": "4e-7", "lr_power": 0.8}
    write_tree(root, {**MINIMAL, **keys}, [LOCAL])
    result = import_config("config/config.json")
    assert (result.config.train.lr_end, result.config.train.lr_power) == (None, None)
    assert _mapping(result, "lr_power").target is None


def test_optimi_lion_of_the_examples(root) -> None:
    """simpletuner/examples/auraflow.peft-lora/config.json (and four more): optimi-lion."""
    keys = {"optimizer": "optimi-lion", "learning_rate": 1e-4}
    keys |= {"lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 100}
    write_tree(root, {**MINIMAL, **keys}, [LOCAL])
    t = import_config("config/config.json").config.train
    assert (t.optimizer, t.betas, t.weight_decay, t.eps) == ("optimi-lion", (0.9, 0.99), 0.0, 1e-8)
    assert (t.lr, t.lr_scheduler, t.warmup_steps) == (1e-4, "constant_with_warmup", 100)


def test_aspect_bucket_alignment_is_ignored_with_the_reason(root) -> None:
    write_tree(root, {**MINIMAL, "aspect_bucket_alignment": 32}, [LOCAL])
    result = import_config("config/config.json")
    assert result.warnings == []
    assert _mapping(result, "aspect_bucket_alignment").note == (
        "ignored: SimpleTuner overrides it to 64 px for Sana whatever the value "
        "(helpers/models/sana/model.py), so it changes nothing there; sanakit rounds bucket "
        "sides to multiples of 32 px (the DC-AE factor), not 64"
    )
