"""Sana-Sprint (Chen et al. 2025, arXiv:2503.09641): few-step students distilled from a flow
teacher with continuous-time consistency (sCM, Lu & Song 2024) in TrigFlow.

- :mod:`.trigflow` — TrigFlow time samplers and the consistency function (the Flow -> TrigFlow
  wrapper itself is :func:`sanakit.flow.trigflow_output`, shared with the SCM sampler);
- :mod:`.convert` — a Sana model -> Sprint teacher (qk-norm, dense time) and teacher -> student;
- :mod:`.student` — the student: transformer with a guidance embedding + logvar head;
- :mod:`.scm` — the sCM generator loss (JVP tangent, normalisation, warm-up, adaptive weight);
- :mod:`.config` — the ``[distill]`` section; :mod:`.trainer` — ``sanakit distill``;
  :mod:`.export` — ``SanaSprintPipeline`` folders.
"""
