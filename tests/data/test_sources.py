"""Each source type and caption strategy."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest

from sanakit.config import DatasetConfig
from sanakit.data.captions import filename_caption
from sanakit.data.sources import discover
from sanakit.errors import SanakitError
from tests.data.fakes import noise_image, write_image


def _png(seed: int, w: int = 24, h: int = 16) -> bytes:
    buf = io.BytesIO()
    noise_image(w, h, seed).save(buf, "PNG")
    return buf.getvalue()


def test_folder_recursive_textfile(tmp_path: Path) -> None:
    write_image(tmp_path / "b.png", 20, 20, caption="second\n\nsecond, alt\n")
    write_image(tmp_path / "sub" / "deeper" / "a.JPG", 20, 20)
    (tmp_path / "sub" / "deeper" / "a.caption").write_text("\ufefffirst caption")
    write_image(tmp_path / "c.webp", 20, 20)  # no caption file
    write_image(tmp_path / ".hidden" / "x.png", 20, 20, caption="hidden")
    (tmp_path / "notes.md").write_text("ignored")
    items = discover(DatasetConfig(id="d", path=str(tmp_path)))
    assert [i.name for i in items] == ["b.png", "c.webp", "sub/deeper/a.JPG"]
    assert items[0].captions == ("second", "second, alt")
    assert items[2].captions == ("first caption",)
    assert items[1].problem == "missing caption file c.txt"
    assert items[0].read() == (tmp_path / "b.png").read_bytes()
    assert items[0].stat is not None and items[0].stat[0] == (tmp_path / "b.png").stat().st_size


def test_folder_filename_and_instance_prompt(tmp_path: Path) -> None:
    write_image(tmp_path / "a_red-car_0003.png", 20, 20)
    write_image(tmp_path / "0001.png", 20, 20)
    items = discover(DatasetConfig(id="d", path=str(tmp_path), caption_strategy="filename"))
    assert [(i.name, i.captions, i.problem) for i in items] == [
        ("0001.png", (), "file name '0001' gives an empty caption"),
        ("a_red-car_0003.png", ("a red car",), None),
    ]
    inst = discover(
        DatasetConfig(
            id="d",
            path=str(tmp_path),
            caption_strategy="instance_prompt",
            instance_prompt="sks dog",
        )
    )
    assert all(i.captions == ("sks dog",) for i in inst)


@pytest.mark.parametrize(
    ("stem", "caption"),
    [
        ("a_red-car_0003", "a red car"),
        ("cat (2)", "cat"),
        ("photo123", "photo123"),
        ("x__y--z", "x y z"),
        ("dog_1_2", "dog"),
    ],
)
def test_filename_caption_rules(stem: str, caption: str) -> None:
    assert filename_caption(stem) == caption


def test_folder_masks(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 20, 20, caption="a")
    noise_image(20, 20).convert("L").save(tmp_path / "a.mask.png")
    write_image(tmp_path / "b.png", 20, 20, caption="b")
    items = discover(DatasetConfig(id="d", path=str(tmp_path), masks=True))
    assert [i.name for i in items] == ["a.png", "b.png"]  # the mask is not an image
    assert items[0].read_mask is not None and items[1].problem == "missing mask file b.mask.png"


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SanakitError, match=r"data\.datasets\[0\]\.path: folder .* not found"):
        discover(DatasetConfig(id="d", path=str(tmp_path / "nope")))
    with pytest.raises(SanakitError, match=r"no images \(.jpg.*\) found"):
        discover(DatasetConfig(id="d", path=str(tmp_path)))


def test_manifest_jsonl(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "a.png", 20, 20)
    rows = [
        {"image": "imgs/a.png", "caption": ["one", "two"]},
        {"image": str(tmp_path / "imgs" / "a.png"), "caption": "abs path"},
        {"image": "https://example.com/x.jpg", "caption": "remote"},
        {"image": "imgs/missing.png", "caption": "gone"},
        {"image": "imgs/a.png", "caption": None},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    items = discover(DatasetConfig(id="m", path=str(path), type="manifest"))
    assert items[0].name == "imgs/a.png" and items[0].captions == ("one", "two")
    assert items[1].captions == ("abs path",) and items[1].read() == items[0].read()
    assert "URL https://example.com/x.jpg is not supported" in str(items[2].problem)
    with pytest.raises(OSError):
        items[3].read()  # reported as unreadable by the cache scan
    assert items[4].problem == "missing caption in column 'caption'"


def test_manifest_csv_and_errors(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 20, 20)
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "text"])
        writer.writeheader()
        writer.writerow({"file": "a.png", "text": "from csv"})
    items = discover(
        DatasetConfig(
            id="m", path=str(path), type="manifest", image_column="file", caption_column="text"
        )
    )
    assert items[0].captions == ("from csv",)
    with pytest.raises(
        SanakitError,
        match=r"caption_column: manifest m\.csv has no column 'caption' \(columns: file, text\)",
    ):
        discover(DatasetConfig(id="m", path=str(path), type="manifest", image_column="file"))
    filename = discover(
        DatasetConfig(
            id="m",
            path=str(path),
            type="manifest",
            image_column="file",
            caption_strategy="filename",
        )
    )
    assert filename[0].captions == ("a",)


def test_manifest_parquet_with_embedded_bytes(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "image": [{"bytes": _png(1), "path": None}, {"bytes": _png(2), "path": None}],
            "caption": [["p one", "p uno"], ["p two"]],
        }
    )
    path = tmp_path / "m.parquet"
    pq.write_table(table, path)
    items = discover(DatasetConfig(id="m", path=str(path), type="manifest"))
    assert [i.name for i in items] == ["m.parquet[0]", "m.parquet[1]"]
    assert items[0].captions == ("p one", "p uno") and items[0].read() == _png(1)


def test_hf_dataset_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"img": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"img": [{"bytes": _png(i), "path": None} for i in range(3)], "text": ["zero", "one", ""]},
        features=feats,
    )
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "hf"))
    cfg = DatasetConfig(
        id="h", path=str(tmp_path / "hf"), type="hf", image_column="img", caption_column="text"
    )
    items = discover(cfg)
    assert [i.captions for i in items[:2]] == [("zero",), ("one",)]
    assert items[2].problem == "empty caption in column 'text'"
    assert items[1].read() == _png(1) and items[0].name == "train/00000000"
    test = discover(
        DatasetConfig(
            id="h",
            path=str(tmp_path / "hf"),
            type="hf",
            image_column="img",
            caption_column="text",
            split="test",
        )
    )
    assert len(test) == 1
    with pytest.raises(SanakitError, match=r"split: 'val' not in .* \(splits: train, test\)"):
        discover(
            DatasetConfig(
                id="h",
                path=str(tmp_path / "hf"),
                type="hf",
                image_column="img",
                caption_column="text",
                split="val",
            )
        )


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path: Path) -> None:
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard:03d}.tar", "w") as tar:
            for k in range(2):
                key = f"s{shard}/{k:04d}"
                _add(tar, f"{key}.jpg", _png(shard * 10 + k))
                _add(tar, f"{key}.txt", f"caption {shard} {k}".encode())
                _add(tar, f"{key}.json", json.dumps({"caption": f"json {shard} {k}"}).encode())
            _add(tar, "s9/orphan.txt", b"no image")
    spec = str(tmp_path / "shard-{000..001}.tar")
    items = discover(DatasetConfig(id="w", path=spec, type="webdataset"))
    assert [i.name for i in items] == [
        "shard-000.tar/s0/0000",
        "shard-000.tar/s0/0001",
        "shard-001.tar/s1/0000",
        "shard-001.tar/s1/0001",
    ]
    assert items[3].captions == ("caption 1 1",) and items[3].read() == _png(11)
    by_json = discover(
        DatasetConfig(id="w", path=str(tmp_path), type="webdataset", caption_strategy="manifest")
    )
    assert by_json[2].captions == ("json 1 0",)
    by_glob = discover(
        DatasetConfig(
            id="w",
            path=str(tmp_path / "shard-*.tar"),
            type="webdataset",
            caption_strategy="filename",
        )
    )
    assert len(by_glob) == 4 and by_glob[0].problem == "file name '0000' gives an empty caption"


def test_webdataset_rejects_compressed(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "x.tar", "w:gz") as tar:
        _add(tar, "a.png", _png(0))
    with pytest.raises(SanakitError, match="uncompressed tar"):
        discover(DatasetConfig(id="w", path=str(tmp_path / "x.tar"), type="webdataset"))
