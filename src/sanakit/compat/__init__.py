"""Importers for other trainers' configurations: :mod:`sanakit.compat.simpletuner` (SimpleTuner's
Sana quickstart setup)."""

from sanakit.compat.simpletuner import (
    ImportResult,
    MappingEntry,
    import_config,
    is_simpletuner_config,
)

__all__ = ["ImportResult", "MappingEntry", "import_config", "is_simpletuner_config"]
