"""DATALOADER.md's parquet backend (photo-concept-bucket): ids without extension
(``identifier_includes_extension: false``, also SimpleTuner's default) resolve to the image files
beside the parquet file, numeric ids too (issue 16 gap)."""

from __future__ import annotations

import pytest
from PIL import Image
from tests.compat.conftest import MINIMAL, write_tree

from sanakit.compat import import_config
from sanakit.config import DatasetConfig
from sanakit.data.sources import discover
from sanakit.errors import SanakitError

NO_EXTENSION = (
    "ids without extension: sanakit reads the image file named id + an image extension "
    "(.jpg .jpeg .png .webp .bmp) beside the manifest (numeric ids too); a name that already "
    "exists is read as it is"
)


def _backend(parquet: dict) -> list[dict]:
    return [
        {
            "id": "photo-concept-bucket",
            "type": "local",
            "instance_data_dir": "datasets/pcb",
            "caption_strategy": "parquet",
            "metadata_backend": "parquet",
            "parquet": parquet,
            "resolution": 1.0,
            "resolution_type": "area",
            "minimum_image_size": 0.25,
        },
        {"id": "text", "dataset_type": "text_embeds", "type": "local", "cache_dir": "tc"},
    ]


@pytest.mark.parametrize("flag", [False, "false", None])  # None: the key left out
def test_parquet_ids_without_extension(root, flag) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "datasets" / "pcb"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 10, 10)).save(folder / "101.png")
    Image.new("RGB", (48, 64), (10, 10, 200)).save(folder / "102.jpg")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(folder / "green.webp")
    table = {
        "id": [101, 102, 103],
        "caption": ["a red box", "a blue card", "a green leaf"],
        "width": [64, 48, 64],
        "height": [48, 64, 64],
    }
    pq.write_table(pa.table(table), folder / "photo-concept-bucket.parquet")
    spec = {
        "path": "photo-concept-bucket.parquet",
        "filename_column": "id",
        "caption_column": "caption",
        "width_column": "width",
        "height_column": "height",
    }
    if flag is not None:
        spec["identifier_includes_extension"] = flag
    write_tree(root, MINIMAL, _backend(spec))
    result = import_config("config/config.json")
    assert result.warnings == []
    (entry,) = [e for e in result.mapping if e.key.endswith("identifier_includes_extension")]
    why = NO_EXTENSION if flag is not None else "SimpleTuner's default false; " + NO_EXTENSION
    assert entry.note == "ignored: " + why
    ds = result.config.data.datasets[0]
    assert (ds.type, ds.image_column, ds.caption_column) == ("manifest", "id", "caption")
    items = discover(ds)
    assert [(i.name, i.captions, i.problem is None) for i in items[:2]] == [
        ("101.png", ("a red box",), True),
        ("102.jpg", ("a blue card",), True),
    ]
    assert items[0].read() == (folder / "101.png").read_bytes()
    with pytest.raises(OSError):  # 103 has no image file: reported by the cache as unreadable
        items[2].read()


def test_an_id_naming_several_images_is_a_problem_item(root) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "datasets" / "pcb"
    folder.mkdir(parents=True)
    for name in ("a.png", "a.jpg", "b.png"):
        Image.new("RGB", (64, 64)).save(folder / name)
    table = {"id": ["a", "b.png"], "caption": ["one", "two"]}
    pq.write_table(pa.table(table), folder / "m.parquet")
    spec = {"path": "m.parquet", "filename_column": "id", "caption_column": "caption"}
    write_tree(root, MINIMAL, _backend(spec))
    items = discover(import_config("config/config.json").config.data.datasets[0])
    assert (
        items[0].problem == f"{folder / 'a'} names several images (a.jpg, a.png); add the extension"
    )
    assert (items[1].name, items[1].problem) == ("b.png", None)


def test_dataloader_md_parquet_example_with_fallback_captions(root) -> None:
    """DATALOADER.md's parquet block as written: ids without extension, cogvlm captions with
    tags as the fallback caption column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "datasets" / "pcb"
    folder.mkdir(parents=True)
    for i in (1, 2, 3):
        Image.new("RGB", (64, 64)).save(folder / f"{i}.jpg")
    table = {
        "id": [1, 2, 3],
        "cogvlm_caption": ["a red box", "", None],
        "tags": ["box, red", "card, blue", None],
        "width": [64, 64, 64],
        "height": [64, 64, 64],
    }
    pq.write_table(pa.table(table), folder / "photo-concept-bucket.parquet")
    spec = {
        "path": "photo-concept-bucket.parquet",
        "filename_column": "id",
        "caption_column": "cogvlm_caption",
        "fallback_caption_column": "tags",
        "width_column": "width",
        "height_column": "height",
        "identifier_includes_extension": False,
    }
    write_tree(root, MINIMAL, _backend(spec))
    result = import_config("config/config.json")
    assert result.warnings == []
    ds = result.config.data.datasets[0]
    assert (ds.caption_column, ds.fallback_caption_column) == ("cogvlm_caption", "tags")
    items = discover(ds)
    assert [(i.name, i.captions) for i in items[:2]] == [
        ("1.jpg", ("a red box",)),
        ("2.jpg", ("card, blue",)),
    ]
    assert items[2].problem == (
        "missing caption in column 'cogvlm_caption' and in fallback column 'tags'"
    )
    # the fallback column must exist, and is a manifest setting only
    bad = {**spec, "fallback_caption_column": "nope"}
    write_tree(root, MINIMAL, _backend(bad))
    with pytest.raises(
        SanakitError, match=r"fallback_caption_column: manifest .* no column 'nope'"
    ):
        discover(import_config("config/config.json").config.data.datasets[0])
    with pytest.raises(Exception, match="fallback_caption_column"):
        DatasetConfig(id="x", path="p", type="folder", fallback_caption_column="tags")


def test_parquet_columns_left_out_take_simpletuner_defaults(root) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "datasets" / "pcb"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(folder / "7.png")
    pq.write_table(pa.table({"id": [7], "description": ["a photo"]}), folder / "m.parquet")
    write_tree(root, MINIMAL, _backend({"path": "m.parquet"}))
    result = import_config("config/config.json")
    ds = result.config.data.datasets[0]
    assert (ds.image_column, ds.caption_column) == ("id", "description")
    notes = {e.key: (e.target, e.note) for e in result.mapping if e.key.endswith("_column")}
    at = "multidatabackend.json[0].parquet"
    assert notes == {
        f"{at}.filename_column": ("data.datasets[0].image_column", "SimpleTuner's default 'id'"),
        f"{at}.caption_column": (
            "data.datasets[0].caption_column",
            "SimpleTuner's default 'description'",
        ),
    }
    assert [(i.name, i.captions) for i in discover(ds)] == [("7.png", ("a photo",))]
