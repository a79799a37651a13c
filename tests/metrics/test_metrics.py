"""CLIP score, FID and KID: closed forms, the library calls, and the missing-model errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sanakit.errors import SanakitError
from sanakit.metrics import fid as fid_module
from sanakit.metrics.clip import ClipModel, clip_score_from_embeddings
from sanakit.metrics.fid import (
    INCEPTION_FILE,
    clip_features,
    fid,
    fid_kid,
    inception_features,
    kid,
    read_image_folder,
)


def _images(n: int, seed: int, offset: float = 0.0, size: int = 32) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(100 + offset, 40, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return [Image.fromarray(p) for p in pixels]


def test_clip_score_of_fixed_embeddings_is_the_formula_by_hand():
    images = torch.tensor([[1.0, 0.0, 0.0], [3.0, 4.0, 0.0], [1.0, 1.0, 0.0]])
    texts = torch.tensor([[2.0, 0.0, 0.0], [4.0, 3.0, 0.0], [-1.0, -1.0, 0.0]])
    # cosines 1, (12 + 12) / 25 = 0.96, -1 (clipped to 0)
    expected = torch.tensor([100.0, 96.0, 0.0])
    assert torch.allclose(clip_score_from_embeddings(images, texts), expected, atol=1e-4)


def test_clip_model_scores_with_transformers_clip_embeddings(tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    clip = ClipModel.load(tiny_clip_dir)
    images, texts = _images(3, 0), ["a red circle", "a blue square", "a green triangle"]
    scores = clip.score(images, texts, batch_size=2)  # two batches
    # transformers' own forward: image_embeds / text_embeds are the normalised projections
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    proc = CLIPProcessor.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        out = model(**proc(text=texts, images=images, return_tensors="pt", padding=True))
    cos = (out.image_embeds * out.text_embeds).sum(-1)
    assert torch.allclose(scores, 100 * cos.clamp(min=0), atol=1e-4)
    assert scores.shape == (3,) and (scores >= 0).all()


def test_identical_sets_give_zero_fid_and_kid_and_a_shift_gives_more(tiny_clip_dir):
    space = clip_features(ClipModel.load(tiny_clip_dir))
    real = space.extract(_images(40, 0))
    same = fid_kid(real, real.clone())
    shifted = fid_kid(real, space.extract(_images(40, 1, offset=80)))
    assert abs(same["fid"]) < 1e-6 and shifted["fid"] > 1.0
    # KID's unbiased MMD^2 estimate of a set against itself is slightly negative (the cross
    # term keeps the i = j pairs), small against a real shift
    assert abs(same["kid"]) < 0.01 * shifted["kid"]


def test_fid_is_the_frechet_distance_by_hand():
    import scipy.linalg

    g = torch.Generator().manual_seed(0)
    real = torch.randn(500, 4, generator=g, dtype=torch.float64)
    fake = torch.randn(500, 4, generator=g, dtype=torch.float64) * 1.5 + torch.tensor([1, 0, 0, 2])
    r, f = real.numpy(), fake.numpy()
    s_r, s_f = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    by_hand = ((r.mean(0) - f.mean(0)) ** 2).sum() + np.trace(
        s_r + s_f - 2 * scipy.linalg.sqrtm(s_r @ s_f)
    ).real
    # unit vs 1.5^2 covariance shifted by (1, 0, 0, 2): about 5 + 4 * (1 - 1.5)^2 = 6
    assert fid(real, fake) == pytest.approx(by_hand, rel=1e-8) and 5 < by_hand < 7


def test_fid_and_kid_are_computed_by_torchmetrics(monkeypatch):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    calls = []
    for cls in (FrechetInceptionDistance, KernelInceptionDistance):
        original = cls.compute

        def spy(self, _original=original, _name=cls.__name__):
            calls.append(_name)
            return _original(self)

        monkeypatch.setattr(cls, "compute", spy)
    real = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    fid(real, real + 1)
    kid(real, real + 1, subsets=5)
    assert calls == ["FrechetInceptionDistance", "KernelInceptionDistance"]


def test_kid_is_reproducible_from_its_seed():
    real = torch.randn(30, 4, generator=torch.Generator().manual_seed(2))
    fake = real + 0.5
    assert kid(real, fake, subsets=10, subset_size=10, seed=3) == kid(
        real, fake, subsets=10, subset_size=10, seed=3
    )


def test_missing_clip_model_files_are_one_line_errors(tiny_clip_dir, tmp_path):
    with pytest.raises(SanakitError, match="no such folder.*hf download"):
        ClipModel.load(tmp_path / "nope")
    broken = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(SanakitError, match=r"no weights \(model.safetensors") as err:
        ClipModel.load(broken)
    assert "\n" not in str(err.value)


def test_missing_inception_weights_name_the_file_and_where_to_get_it(tmp_path):
    with pytest.raises(SanakitError) as err:
        inception_features(tmp_path)
    assert INCEPTION_FILE in str(err.value) and "https://github.com/toshas" in str(err.value)


def test_inception_without_torch_fidelity_says_what_to_install(tmp_path, monkeypatch):
    import torchmetrics.image.fid as tm_fid

    if tm_fid._TORCH_FIDELITY_AVAILABLE:
        pytest.skip("torch-fidelity is installed here")
    (tmp_path / INCEPTION_FILE).write_bytes(b"")
    with pytest.raises(SanakitError, match="needs torch-fidelity"):
        inception_features(tmp_path)


def test_reference_folder_reading(tmp_path):
    for i, im in enumerate(_images(3, 0)):
        im.save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert len(read_image_folder(tmp_path)) == 3
    assert len(read_image_folder(tmp_path, limit=2)) == 2
    with pytest.raises(SanakitError, match="0 readable images"):
        read_image_folder(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)
    with pytest.raises(SanakitError, match="at least 2"):
        fid_module.fid(torch.zeros(1, 3), torch.zeros(5, 3))


def test_folder_features_in_chunks_equal_the_whole_folder(tiny_clip_dir, tmp_path):
    from sanakit.metrics.fid import folder_features

    for i, im in enumerate(_images(5, 3)):
        im.save(tmp_path / f"{i}.png")
    space = clip_features(ClipModel.load(tiny_clip_dir))
    whole = space.extract(read_image_folder(tmp_path, limit=4))
    assert torch.allclose(folder_features(tmp_path, space, limit=4, chunk=3), whole, atol=1e-5)
