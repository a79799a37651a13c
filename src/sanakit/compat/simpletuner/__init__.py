"""SimpleTuner compatibility: import a SimpleTuner Sana setup (``config.json`` +
``multidatabackend.json`` + prompt library + LyCORIS config) as a sanakit config.

Modules: :mod:`.importer` (the entry point and the TOML it writes), :mod:`.trainer` with
:mod:`.optim` and :mod:`.output` (config.json key groups), :mod:`.datasets` and :mod:`.captions`
(the backends), :mod:`.lycoris` (the LyCORIS config), :mod:`.keys` (ignored and off-only keys),
:mod:`.common` (the mapping record, value coercion, path resolution, :class:`KeyReader`).
"""

from sanakit.compat.simpletuner.importer import (
    ImportResult,
    MappingEntry,
    import_config,
    is_simpletuner_config,
)

__all__ = ["ImportResult", "MappingEntry", "import_config", "is_simpletuner_config"]
