"""The demo classifier (:mod:`sanakit.demo.score`) as an evaluation metric for demo prompts.

A demo prompt follows the dataset's caption template ``"a {colour} {shape} on a {background}
background"`` (:func:`sanakit.demo.shapes.caption`); an image scores 1 when the classifier finds
that colour AND that shape (the demo's ``prompt_adherence``), else 0. It measures learning only
on images of the demo's synthetic shapes: on anything else it is meaningless.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from PIL import Image

from sanakit.demo.score import classify
from sanakit.demo.shapes import BACKGROUNDS, COLORS, SHAPES
from sanakit.errors import SanakitError

_TEMPLATE = re.compile(
    rf"^a ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) on a ({'|'.join(BACKGROUNDS)}) background$"
)


def prompt_labels(prompt: str) -> tuple[str, str]:
    """(colour, shape) of a demo prompt; any other prompt is an error naming the template."""
    match = _TEMPLATE.match(prompt.strip())
    if not match:
        raise SanakitError(
            f"demo score: {prompt!r} is not a demo prompt; use 'a {{colour}} {{shape}} on a "
            f"{{background}} background' with colour in {', '.join(COLORS)}, shape in "
            f"{', '.join(SHAPES)}, background in {', '.join(BACKGROUNDS)}"
        )
    return match.group(1), match.group(2)


def demo_adherence(images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
    """1.0 per image whose classified colour and shape match its prompt, else 0.0."""
    labels = [prompt_labels(p) for p in prompts]
    out = []
    for image, (color, shape) in zip(images, labels, strict=True):
        seen = classify(image)
        out.append(float(seen.color == color and seen.shape == shape))
    return out
