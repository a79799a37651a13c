"""``sanakit generate --compile``: the transformer blocks are compiled (regional torch.compile)
and the image equals the eager one. The test compiles with dynamo + AOTAutograd only
(``aot_eager``): inductor's C++ compile takes minutes on a 2-core CI machine."""

from __future__ import annotations

import numpy as np
import torch._dynamo
from PIL import Image

from sanakit.cli import main
from sanakit.models.sana import SanaTransformer


def test_generate_compile_matches_eager(tiny_pipeline_dir, tmp_path, monkeypatch, capsys) -> None:
    calls = []
    original = SanaTransformer.compile_blocks

    def compile_blocks(self, **options):
        calls.append(self)
        original(self, **{**options, "backend": "aot_eager"})

    monkeypatch.setattr(SanaTransformer, "compile_blocks", compile_blocks)
    common = ["a red cat", "--model", str(tiny_pipeline_dir), "--steps", "2", "--device", "cpu"]
    common += ["--height", "64", "--width", "96", "--no-resolution-binning"]
    torch._dynamo.reset()
    try:
        assert main(["generate", *common, "--out", str(tmp_path / "eager.png")]) == 0
        assert not calls
        assert main(["generate", *common, "--compile", "--out", str(tmp_path / "c.png")]) == 0
    finally:
        torch._dynamo.reset()
    capsys.readouterr()
    assert len(calls) == 1 and calls[0].compiled
    eager, compiled = (
        np.asarray(Image.open(tmp_path / n), np.int16) for n in ("eager.png", "c.png")
    )
    diff = np.abs(eager - compiled)
    assert diff.max() <= 1  # compiled and eager differ by fp32 rounding at most
