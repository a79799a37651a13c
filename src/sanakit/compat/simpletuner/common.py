"""Shared machinery of the SimpleTuner importer: the mapping record, value coercion (SimpleTuner
configs hold JSON types or strings such as ``"true"`` and ``"1e-4"``) and path resolution.

Paths: SimpleTuner runs from its repository root, so ``"config/multidatabackend.json"`` in
``config/config.json`` is relative to the *parent* of ``config/``. A relative path is looked up
against, in order, the current directory, the parent of the config's folder and the config's
folder; the first base where it exists wins and the mapping note says which. Paths that need not
exist yet (output and cache folders) use the base where ``data_backend_config`` was found.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sanakit.errors import SanakitError

ABSENT = object()  # a key the SimpleTuner file does not set


class MappingEntry(NamedTuple):
    """One SimpleTuner setting and what became of it.

    ``key``: the SimpleTuner key (``learning_rate``, ``multidatabackend.json[1].crop``,
    ``lycoris_config.json:factor``); ``value``: as written; ``target``: the sanakit key it sets
    (``train.lr``, ``data.datasets[1].crop``) or None when ignored/dropped; ``note``: why/how.
    """

    key: str
    value: Any
    target: str | None
    note: str


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", ""}
OFF_STRINGS = {"", "false", "0", "none", "null", "no", "off"}


def words(text: str) -> frozenset[str]:
    """A set of names from a whitespace-separated block of text."""
    return frozenset(text.split())


def is_off(value: Any) -> bool:
    """SimpleTuner's "not enabled" values: false, 0 (also "0.0"), empty, null, "none"."""
    if value is None or value is False:
        return True
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in OFF_STRINGS:
            return True
        try:
            return float(text) == 0  # "0.0", as SimpleTuner configs write numbers
        except ValueError:
            return False
    if isinstance(value, list | dict):
        return not value
    return False


class Context:
    """Collects the mapping of one import, and the unsupported keys: all of them are reported
    together by :meth:`raise_unsupported`, or (``allow_unsupported``) dropped with warnings."""

    def __init__(self, allow_unsupported: bool) -> None:
        self.allow_unsupported = allow_unsupported
        self.entries: list[MappingEntry] = []
        self.warnings: list[str] = []
        self.rejected: list[tuple[Path, str]] = []  # (file, "key = value is not supported: ...")

    def mapped(self, key: str, value: Any, target: str, note: str = "") -> None:
        self.entries.append(MappingEntry(key, value, target, note))

    def ignored(self, key: str, value: Any, reason: str) -> None:
        self.entries.append(MappingEntry(key, value, None, f"ignored: {reason}"))

    def unsupported(
        self, file: Path, key: str, value: Any, detail: str, *, subject: str | None = None
    ) -> None:
        """Drop the key (the import goes on as if it were absent) and record it: as a warning
        with ``allow_unsupported``, else for the error of :meth:`raise_unsupported`. Messages
        name ``subject`` (default ``key = value``)."""
        self.entries.append(MappingEntry(key, value, None, f"UNSUPPORTED, dropped: {detail}"))
        subject = subject or f"{key} = {value!r}"
        if self.allow_unsupported:
            self.warnings.append(f"{subject} dropped: {detail}")
        else:
            self.rejected.append((file, f"{subject} is not supported: {detail}"))

    def raise_unsupported(self, source: Path) -> None:
        """Raise one :class:`SanakitError` naming every unsupported key met (none: return). One
        key: a one-line error naming its file; several: a first line that counts them and says
        what to do, then one numbered line per key (each key names its file)."""
        if not self.rejected:
            return
        if len(self.rejected) == 1:
            ((file, problem),) = self.rejected
            raise SanakitError(
                f"{file}: {problem}; remove it (or pass --allow-unsupported to drop it with a "
                f"warning)"
            )
        lines = [
            f"{source}: {len(self.rejected)} SimpleTuner settings are not supported; remove them "
            f"(or pass --allow-unsupported to drop them with a warning):"
        ]
        lines += [f"  {i}. {problem}" for i, (_, problem) in enumerate(self.rejected, 1)]
        raise SanakitError("\n".join(lines))


def unknown_key(file: Path, key: str, known: Iterable[str]) -> SanakitError:
    """The error for a key that is not a SimpleTuner option sanakit knows (likely a typo)."""
    near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}?" if near else "see docs/simpletuner.md for the keys read"
    return SanakitError(f"{file}: unknown SimpleTuner key {key!r}; {hint}")


# ----------------------------------------------------------------------------- values
def as_bool(file: Path, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise SanakitError(f"{file}: {key} must be true or false, got {value!r}")


def as_float(file: Path, key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SanakitError(f"{file}: {key} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise SanakitError(f"{file}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise SanakitError(f"{file}: {key} must be a finite number, got {value!r}")
    return out


def as_int(file: Path, key: str, value: Any) -> int:
    out = as_float(file, key, value)
    if out != int(out):
        raise SanakitError(f"{file}: {key} must be a whole number, got {value!r}")
    return int(out)


def as_str(file: Path, key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise SanakitError(f"{file}: {key} must be a string, got {value!r}")


def hub_cache(repo_id: str) -> Path | None:
    """The folder of ``repo_id`` in the local Hugging Face cache, never downloading."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def normalise_keys(file: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """``{"--seed": 1}`` -> ``{"seed": 1}``; a key given both with and without ``--`` is an
    error (SimpleTuner accepts both spellings)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key[2:] if key.startswith("--") else key
        if name in out:
            raise SanakitError(f"{file}: {name!r} is given twice (with and without '--')")
        out[name] = value
    return out


# ----------------------------------------------------------------------------- paths
class PathResolver:
    """Resolves SimpleTuner's relative paths (see the module docstring)."""

    def __init__(self, config_file: Path, cwd: Path | None = None) -> None:
        cwd = (cwd or Path.cwd()).resolve()
        folder = config_file.resolve().parent
        candidates = [
            ("the current directory", cwd),
            ("the parent of the config's folder", folder.parent),
            ("the config's folder", folder),
        ]
        self.bases: list[tuple[str, Path]] = []
        for label, base in candidates:
            if all(base != b for _, b in self.bases):
                self.bases.append((label, base))
        self.root: tuple[str, Path] = self.bases[0]

    def find(self, value: str) -> tuple[Path, str] | None:
        """An existing file/folder for ``value`` and how it was found, or None."""
        path = Path(value).expanduser()
        if path.is_absolute():
            return (path, "absolute path") if path.exists() else None
        for label, base in self.bases:
            if (base / path).exists():
                return (base / path).resolve(), f"relative to {label}"
        return None

    def place(self, value: str) -> tuple[Path, str]:
        """Where ``value`` goes when it need not exist: relative paths join the root base."""
        path = Path(value).expanduser()
        if path.is_absolute():
            return path, "absolute path"
        label, base = self.root
        return (base / path).resolve(), f"relative to {label}"

    def locate(self, value: str) -> tuple[Path, str]:
        """An existing path if there is one, else :meth:`place`."""
        return self.find(value) or self.place(value)

    def tried(self, value: str) -> str:
        return ", ".join(str(base / value) for _, base in self.bases)


# ----------------------------------------------------------------------------- config.json
class KeyReader:
    """The keys of one config.json being mapped into the sanakit tables ``model``/``train``/
    ``validation``/``output``: the methods the key groups (:mod:`.trainer`, :mod:`.optim`,
    :mod:`.output`) share. ``resume`` holds ``resume_from_checkpoint`` (a run option)."""

    def __init__(self, file: Path, raw: dict[str, Any], ctx: Context, paths: PathResolver) -> None:
        self.file, self.raw, self.ctx, self.paths = file, raw, ctx, paths
        self.used: set[str] = set()
        self.tables: dict[str, dict[str, Any]] = {
            "model": {},
            "train": {},
            "validation": {},
            "output": {},
        }
        self.resume: str | None = None

    def take(self, key: str) -> Any:
        """The value of ``key`` (or ABSENT), marking it as handled."""
        self.used.add(key)
        return self.raw.get(key, ABSENT)

    def assign(self, target: str, value: Any) -> None:
        """``assign("train.ema.decay", 0.995)`` sets tables["train"]["ema"]["decay"]."""
        section, *path = target.split(".")
        node = self.tables[section]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value

    def existing_path(self, key: str, value: Any) -> tuple[str, Path, str]:
        """``key``'s value as written, the existing file/folder it names and how it was found
        (:meth:`PathResolver.find`); a one-line error naming the places tried when none."""
        rel = as_str(self.file, key, value)
        found = self.paths.find(rel)
        if found is None:
            raise SanakitError(
                f"{self.file}: {key} {rel!r} not found (tried {self.paths.tried(rel)})"
            )
        return rel, *found

    def put(self, key: str, target: str, value: Any, note: str = "") -> None:
        self.assign(target, value)
        self.ctx.mapped(key, self.raw.get(key, "(not set)"), target, note)

    def direct(self, key: str, target: str, kind: Any, note: str = "") -> Any:
        """Map ``key`` one to one, converting with ``kind`` (as_int, as_float, ...)."""
        value = self.take(key)
        if value is ABSENT:
            return ABSENT
        converted = kind(self.file, key, value)
        self.put(key, target, converted, note)
        return converted


# ----------------------------------------------------------------------------- datasets
@dataclass
class BackendEntry:
    """One image entry of a multidatabackend file being imported, and the sanakit dataset table
    it becomes (``ds``). ``label`` names the entry in messages (``multidatabackend.json[2]``),
    ``where`` the sanakit table (``data.datasets[1]``); ``defaults`` holds config.json's
    dataset-wide keys. The methods record under those two prefixes."""

    file: Path
    label: str
    where: str
    entry: dict[str, Any]
    ctx: Context
    paths: PathResolver
    defaults: dict[str, Any]
    ds: dict[str, Any] = field(default_factory=dict)

    def pick(self, key: str, fallback: Any) -> Any:
        """The entry's value, else config.json's, else SimpleTuner's default ``fallback``."""
        if key in self.entry:
            return self.entry[key]
        return self.defaults.get(key, fallback)

    def put(self, key: str, value: Any, target: str, note: str = "", shown: Any = None) -> None:
        """``ds[target] = value``, recorded as ``key`` -> ``target`` with the entry's own value
        (``shown`` when the entry does not set ``key``)."""
        self.ds[target] = value
        self.mapped(key, self.entry.get(key, shown), target, note)

    def mapped(self, key: str, value: Any, target: str, note: str = "") -> None:
        self.ctx.mapped(f"{self.label}.{key}", value, f"{self.where}.{target}", note)

    def ignored(self, key: str, value: Any, reason: str) -> None:
        self.ctx.ignored(f"{self.label}.{key}", value, reason)

    def unsupported(self, key: str, value: Any, detail: str) -> None:
        self.ctx.unsupported(self.file, f"{self.label}.{key}", value, detail)
