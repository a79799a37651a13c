"""Evaluation metrics over maintained libraries, from local model files only: CLIP score
(transformers' CLIP, :mod:`sanakit.metrics.clip`), FID/KID (torchmetrics, :mod:`sanakit.metrics.fid`)
and the demo's classifier score (:mod:`sanakit.metrics.demo`). ``sanakit eval``
(:mod:`sanakit.metrics.evaluate`) and validation during training use them."""
