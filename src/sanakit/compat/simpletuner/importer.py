"""Import a SimpleTuner Sana setup (``config.json`` + ``multidatabackend.json`` +
``user_prompt_library.json`` + LyCORIS config) as a sanakit :class:`RunConfig`.

Every key is accounted for in :attr:`ImportResult.mapping`: mapped with the same meaning (the
note says where meanings differ in detail), ignored with the reason it is harmless, or
unsupported -> one :class:`SanakitError` naming every unsupported key of the files (and what to
do about each), unless ``allow_unsupported`` (then a warning each and the keys are dropped).
Unknown keys (typos) are errors naming the nearest known key; ``model_family`` other than
``sana`` is an error.

Relative paths follow SimpleTuner, which runs from its repository root: they are looked up
against the current directory, then the parent of the config's folder (so ``config/...`` in
``config/config.json`` works from anywhere), then the config's folder; the sanakit config holds
the resolved absolute paths. See docs/simpletuner.md for the full table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sanakit.compat.simpletuner.common import Context, MappingEntry, PathResolver, normalise_keys
from sanakit.compat.simpletuner.datasets import import_backends
from sanakit.compat.simpletuner.trainer import TrainerKeys
from sanakit.config import apply_overrides, load_config_file
from sanakit.errors import SanakitError
from sanakit.tomlwriter import dumps, paths_of
from sanakit.train.config import (
    RunConfig,
    run_config_from_dict,
    run_config_to_dict,
    with_absolute_paths,
)

__all__ = ["ImportResult", "MappingEntry", "import_config", "is_simpletuner_config"]

# keys only a SimpleTuner config has at its top level (sanakit configs have [model], [train]...)
_MARKERS = {"model_family", "model_type", "pretrained_model_name_or_path", "data_backend_config"}
_SANAKIT_SECTIONS = {"model", "data", "train", "validation", "output"}


def is_simpletuner_config(path: str | Path) -> bool:
    """True for a flat JSON/TOML file with SimpleTuner keys (``model_family``, ``--model_type``,
    ``pretrained_model_name_or_path``, ``data_backend_config``) and no sanakit sections."""
    try:
        raw = load_config_file(path)
    except SanakitError:
        return False
    keys = {k[2:] if k.startswith("--") else k for k in raw}
    return bool(keys & _MARKERS) and not keys & _SANAKIT_SECTIONS


@dataclasses.dataclass(frozen=True)
class ImportResult:
    """The imported configuration and how each SimpleTuner key was used.

    ``config``: the validated RunConfig; ``mapping``: (simpletuner_key, value, sanakit_key or
    None, note) per key; ``warnings``: the unsupported keys dropped (``allow_unsupported``);
    ``resume``: SimpleTuner's ``resume_from_checkpoint`` (a run option, not in the config).
    """

    config: RunConfig
    mapping: list[MappingEntry]
    warnings: list[str]
    source: Path
    resume: str | None = None

    def resume_for(self, output_dir: str | Path) -> str | None:
        """SimpleTuner's resume rule: ``latest`` resumes only when a checkpoint exists."""
        from sanakit.train.checkpoint import Checkpointer

        if self.resume == "latest":
            return "latest" if Checkpointer(output_dir).latest() is not None else None
        return self.resume

    def summary(self) -> str:
        """A readable table of the mapping (printed by ``sanakit train`` and the importer)."""
        lines = [f"SimpleTuner config {self.source} -> sanakit:"]
        for key, value, target, note in self.mapping:
            shown = f"{key} = {_show(value)}"
            where = f"-> {target}" if target else ""
            text = f"  {shown:<48} {where}"
            lines.append((f"{text}  ({note})" if note and target else f"{text}{note}").rstrip())
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def toml(self) -> str:
        """The config as sanakit TOML; each setting is preceded by the SimpleTuner key(s) it came
        from, and ignored/dropped keys are listed with their reasons at the top."""
        data = run_config_to_dict(self.config)
        known = paths_of(data)
        comments: dict[str, list[str]] = {}
        ignored: list[str] = []
        for key, value, target, note in self.mapping:
            text = f"SimpleTuner {key} = {_show(value)}" + (f": {note}" if note else "")
            if target is None:
                ignored.append(f"  {key} = {_show(value)}: {note}")
                continue
            anchor = _anchor(target, known)
            comments.setdefault(anchor, []).append(text)
        header = [
            f"sanakit training config imported from the SimpleTuner config {self.source} by "
            f"`sanakit import-simpletuner`. Each setting is preceded by the SimpleTuner key it "
            f"came from; SimpleTuner keys not set there take sanakit's defaults "
            f"(docs/simpletuner.md). Relative paths were resolved to absolute ones.",
        ]
        if self.resume:
            header.append(
                f"Resume an interrupted run with: sanakit train FILE --resume {self.resume}"
            )
        if ignored:
            header.append("SimpleTuner keys with no setting here:")
            header += ignored
        header.append("")
        top = comments.pop("", [])
        return dumps(data, comments, header + top)


def _show(value: Any) -> str:
    if isinstance(value, str) and value.startswith("(") and value.endswith(")"):
        return value  # "(not set)"
    return json.dumps(value, ensure_ascii=False, default=str)


def _anchor(target: str, known: set[str]) -> str:
    """The nearest path of ``target`` that the TOML has (``train.betas/eps`` -> ``train``,
    ``data.datasets[*].resolution`` -> ``data.datasets``)."""
    path = target.replace("[*]", "")
    while path and path not in known:
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return path


def _check_reported(
    source: Path, raw: dict[str, Any], backend_file: Path, entries: list[MappingEntry]
) -> None:
    """Every key of config.json and of the backends has a mapping entry (none silently lost)."""
    seen = {e.key for e in entries}
    backends = json.loads(backend_file.read_text(encoding="utf-8"))
    wanted = [(source, k) for k in raw]
    wanted += [
        (backend_file, f"{backend_file.name}[{i}].{k}") for i, b in enumerate(backends) for k in b
    ]
    for file, key in wanted:
        if key not in seen and not any(s.startswith(key + ".") for s in seen):  # parquet.path
            raise SanakitError(f"{file}: {key} was read but not reported (a sanakit bug)")


def _base_model_target(data: dict[str, Any], train: dict[str, Any], ctx: Context) -> None:
    """SimpleTuner trains a LoRA/LyCORIS adapter on regularisation samples towards the base
    model's prediction with the adapter disabled (its "parent-teacher" regularisation):
    ``train.regularisation_target = "base_model"`` when an active dataset is one."""
    for i, ds in enumerate(data["datasets"]):
        if ds.get("is_regularisation_data") and not ds.get("disabled"):
            train["regularisation_target"] = "base_model"
            target = f"data.datasets[{i}].is_regularisation_data"
            entry = next(e for e in ctx.entries if e.target == target)
            note = "the target of its samples is the base model's prediction (adapter disabled)"
            ctx.mapped(entry.key, entry.value, "train.regularisation_target", note)
            return


def import_config(
    config_json_path: str | Path,
    *,
    allow_unsupported: bool = False,
    overrides: tuple[str, ...] = (),
) -> ImportResult:
    """Read a SimpleTuner ``config.json`` (keys with or without ``--``; JSON types or strings)
    and the files it names; return the validated sanakit config and the key-by-key mapping.

    ``overrides`` (``"train.lr=2e-5"``) are applied to the imported sanakit config, as
    ``sanakit train --set`` does. Raises :class:`SanakitError` (one line, naming the file and
    key) for unknown keys, a model family other than Sana, a Hub id that is not available
    locally, or missing files; and, unless ``allow_unsupported``, one error listing all the
    unsupported settings of config.json, the backends and the LyCORIS config.
    """
    source = Path(config_json_path)
    raw = normalise_keys(source, load_config_file(source))
    # SimpleTuner's own table-valued options (tread_config, webhook_config...) are read as keys
    # (mapped, ignored or unsupported with their reason); sanakit's sections are not
    sections = sorted(k for k, v in raw.items() if isinstance(v, dict) and k in _SANAKIT_SECTIONS)
    if sections:
        raise SanakitError(
            f"{source}: [{sections[0]}] is a sanakit table: this is a sanakit config, not a "
            f"SimpleTuner config.json; use `sanakit train` directly"
        )
    ctx = Context(allow_unsupported)
    paths = PathResolver(source)
    keys = TrainerKeys(source, raw, ctx, paths)
    keys.run()
    assert keys.backend_file is not None  # run() raises without data_backend_config
    train = keys.tables["train"]
    data = import_backends(
        keys.backend_file,
        ctx,
        paths,
        keys.dataset_defaults,
        method=train.get("method", "full"),
        batch_size=train.get("batch_size", 1),
    )
    if keys.seed is not None:
        data["seed"] = keys.seed
    if train.get("method", "full") != "full":
        _base_model_target(data, train, ctx)
    _check_reported(source, raw, keys.backend_file, ctx.entries)
    ctx.raise_unsupported(source)
    tables = {"model": keys.tables["model"], "data": data, **keys.tables}
    tables = {k: v for k, v in tables.items() if v or k in ("model", "data", "train")}
    if overrides:
        tables = apply_overrides(tables, list(overrides))
    try:
        # the paths left relative (defaults such as output.dir, --set values) are relative to
        # the current directory, SimpleTuner's root; the imported config holds absolute ones
        config = with_absolute_paths(run_config_from_dict(tables), Path.cwd())
        config.validation.prompt_items()  # reads the prompt library now
    except SanakitError as err:
        raise SanakitError(
            f"{source}: the imported settings are not a valid sanakit config: {err}"
        ) from None
    return ImportResult(config, ctx.entries, ctx.warnings, source.resolve(), keys.resume)
