"""``sanakit demo``: a tiny Sana trained from scratch on synthetic shapes, on the CPU, with a
prompt-adherence score. Modules: :mod:`~sanakit.demo.shapes` (dataset),
:mod:`~sanakit.demo.score` (classifier), :mod:`~sanakit.demo.stack` (text encoder, config),
:mod:`~sanakit.demo.settings`, :mod:`~sanakit.demo.run` (the run), :mod:`~sanakit.demo.report`
(pictures). See ``docs/demo.md``."""
