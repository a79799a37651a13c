"""The demo's synthetic dataset, its classifier, the TOML writer and the loss plot (fast)."""

from __future__ import annotations

import io
import json
import math
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sanakit.demo.report import loss_plot, moving_average, sample_grid
from sanakit.demo.score import Prediction, classify, largest_component, score_predictions
from sanakit.demo.settings import DemoSettings
from sanakit.demo.shapes import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    dataset_specs,
    iter_dataset,
    shape_mask,
    write_dataset,
)
from sanakit.errors import SanakitError
from sanakit.tomlwriter import dumps


def test_dataset_is_deterministic_and_balanced():
    first = list(iter_dataset(2, seed=5))
    second = list(iter_dataset(2, seed=5))
    assert [(s, d) for s, _, d in first] == [(s, d) for s, _, d in second]
    other = list(iter_dataset(2, seed=6))
    assert [d for *_, d in first] != [d for *_, d in other]
    combos = Counter((sp.color, sp.shape, sp.background) for _, sp, _ in first)
    assert len(combos) == len(COLORS) * len(SHAPES) * len(BACKGROUNDS) == 36
    assert set(combos.values()) == {2}
    assert len(COLORS) >= 4 and len(SHAPES) >= 3
    for _, spec, data in first:
        image = Image.open(io.BytesIO(data))
        assert image.size == (32, 32) and image.mode == "RGB"
        assert spec.caption == f"a {spec.color} {spec.shape} on a {spec.background} background"
        x0, y0, x1, y1 = spec.box
        assert math.isclose(x1 - x0, y1 - y0) and x0 >= 2 and y0 >= 2 and x1 <= 30 and y1 <= 30
    sizes = [sp.box[2] - sp.box[0] for _, sp, _ in first]
    assert max(sizes) - min(sizes) > 4  # sizes vary


def test_write_dataset_writes_pairs_and_leaves_unchanged_files(tmp_path: Path):
    assert write_dataset(tmp_path, 1, seed=0) == 36
    png = sorted(tmp_path.glob("*.png"))
    assert len(png) == 36 and all(p.with_suffix(".txt").is_file() for p in png)
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    (tmp_path / "shape-00999.png").write_bytes(b"stale")
    assert write_dataset(tmp_path, 1, seed=0) == 36
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamp  # untouched, stale gone
    specs = dataset_specs(1, seed=0)
    assert (tmp_path / "shape-00003.txt").read_text() == specs[3].caption


def test_dataset_rejects_bad_sizes():
    with pytest.raises(SanakitError, match="per_combo"):
        dataset_specs(0)


@pytest.mark.parametrize(
    ("shape", "unit_area"), [("circle", math.pi / 4), ("square", 1.0), ("triangle", 0.5)]
)
def test_shape_mask_area_matches_closed_form(shape, unit_area):
    side = 40.0
    mask = shape_mask(shape, (10.3, 12.7, 10.3 + side, 12.7 + side), 64, 64)
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert float(mask.sum()) == pytest.approx(unit_area * side**2, rel=0.02)


def test_classifier_is_right_on_dataset_images():
    items = list(iter_dataset(8, seed=11))  # 288 images
    preds = [(sp, classify(Image.open(io.BytesIO(d)))) for _, sp, d in items]
    scores = score_predictions((sp.color, sp.shape, p) for sp, p in preds)
    assert scores["samples"] == 288
    assert scores["color_accuracy"] >= 0.98
    assert scores["shape_accuracy"] >= 0.98
    assert scores["prompt_adherence"] >= 0.98
    assert np.mean([p.background == sp.background for sp, p in preds]) >= 0.98


def test_classifier_is_at_chance_on_noise():
    rng = np.random.default_rng(0)
    labels = [(c, s) for c in COLORS for s in SHAPES] * 20  # 240 balanced labels
    preds = [classify(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in labels]
    scores = score_predictions((c, s, p) for (c, s), p in zip(labels, preds))
    # chance: 1/4 colour, 1/3 shape, 1/12 both
    assert scores["color_accuracy"] <= 0.4
    assert scores["shape_accuracy"] <= 0.5
    assert scores["prompt_adherence"] <= 0.2


def test_classifier_on_blank_image_sees_no_foreground():
    pred = classify(Image.new("RGB", (32, 32), (245, 245, 245)))
    assert pred == Prediction(None, None, "white", 0)
    assert score_predictions([("red", "circle", pred)])["prompt_adherence"] == 0.0


def test_largest_component_uses_8_connectivity():
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # diagonal chain: one component of 3
    mask[4, 4] = mask[4, 5] = True
    out = largest_component(mask)
    assert out.sum() == 3 and out[1, 1] and not out[4, 4]
    assert not largest_component(np.zeros((3, 3), bool)).any()


def test_toml_writer_round_trips_the_demo_config(tmp_path: Path):
    from sanakit.demo.run import run_config_dict
    from sanakit.train.config import load_run_config

    settings = DemoSettings(out=tmp_path / 'with "quotes"', steps=7)
    data = run_config_dict(settings)
    text = dumps(data)
    assert tomllib.loads(text) == json.loads(json.dumps(data))
    path = tmp_path / "config.toml"
    path.write_text(text)
    config = load_run_config(path)
    assert config.train.max_steps == 7 and config.model.preset == "demo"
    assert config.data.datasets[0].caption_dropout == settings.caption_dropout
    assert config.model.use_instruction and config.model.text_max_length == 16


def test_moving_average_closed_form():
    out = moving_average([1.0, 2.0, 3.0, 4.0], 2)
    np.testing.assert_allclose(out, [1.0, 1.5, 2.5, 3.5])
    assert moving_average([], 3).size == 0


def test_loss_plot_draws_the_curve():
    steps = list(range(1, 201))
    losses = [2.0 * math.exp(-s / 50) + 0.2 for s in steps]
    image = loss_plot(steps, losses)
    assert image.size == (640, 360)
    arr = np.asarray(image)
    dark_blue = np.all(arr == (20, 60, 160), axis=-1)
    assert dark_blue.sum() > 300
    ys, xs = np.nonzero(dark_blue)
    # decreasing loss: the curve's left end sits higher (smaller y) than its right end
    assert ys[xs < xs.min() + 20].mean() < ys[xs > xs.max() - 20].mean()
    assert loss_plot([], []).size == (640, 360)


def test_loss_plot_shows_the_start_of_a_steep_curve_and_skips_nan_steps():
    steps = list(range(1, 1001))
    losses = [10.0 * math.exp(-s / 30) + 0.1 for s in steps]  # above the 99th percentile early
    losses[500] = float("nan")  # a skipped step
    arr = np.asarray(loss_plot(steps, losses))
    ys, xs = np.nonzero(np.all(arr == (20, 60, 160), axis=-1))
    left = xs < xs.min() + 12
    # the moving average falls visibly over its first steps instead of running flat at the top
    assert ys[left].max() - ys[left].min() > 20
    assert ys.min() > 16  # below the top margin: nothing clipped
    assert xs.max() - xs.min() > 500  # drawn across the whole run despite the NaN


def test_sample_grid_layout():
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    grid = sample_grid([[red, red, red], [red, red, red]], ["first", "second"], scale=2)
    assert grid.size == (3 * 64, 2 * (64 + 14))
    assert grid.getpixel((100, 14 + 10)) == (255, 0, 0)
