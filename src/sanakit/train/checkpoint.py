"""Crash-safe checkpoints: ``OUTPUT/checkpoints/step-NNNNNNNN/`` plus a ``latest`` pointer.

A checkpoint is written into a hidden temporary folder, every file is fsynced, a
``manifest.json`` (file names and sizes) is written last, the folder is renamed into place and
only then ``latest`` is replaced atomically. A crash or a full disk at any point leaves
``latest`` naming the previous complete checkpoint. Pruning keeps the newest ``keep_last``
complete checkpoints and never touches the one ``latest`` names.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from sanakit.errors import SanakitError

MANIFEST = "manifest.json"
LATEST = "latest"

Writer = Callable[[Path], None]


class RunExistsError(SanakitError):
    """The output folder already holds a run and neither resuming nor a new folder was asked."""


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(folder: Path) -> bool:
    """True when ``folder`` has a manifest and every listed file has the recorded size."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError):
        return False
    return all(
        (folder / name).is_file() and (folder / name).stat().st_size == size
        for name, size in files.items()
    )


class Checkpointer:
    """Writes, finds and prunes checkpoints under ``output_dir/checkpoints``."""

    def __init__(self, output_dir: str | os.PathLike, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise SanakitError(f"output.keep_last must be >= 1, got {keep_last}")
        self.root = Path(output_dir) / "checkpoints"
        self.keep_last = keep_last

    def save(self, step: int, writers: dict[str, Writer], extra: dict | None = None) -> Path:
        """Write one checkpoint; ``writers`` maps a file name to a function writing that file."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / step_name(step)
        tmp = self.root / f".tmp-{step_name(step)}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for name, write in writers.items():
                write(tmp / name)
            sizes = {}
            for name in writers:
                _fsync_path(tmp / name)
                sizes[name] = (tmp / name).stat().st_size
            manifest = {"step": step, "files": sizes, **(extra or {})}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            _fsync_path(tmp / MANIFEST)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_path(self.root)
            self._point_latest_to(final.name)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            kept = self.latest()
            hint = f"latest is still {kept.name}" if kept else "no earlier checkpoint"
            raise SanakitError(
                f"could not write checkpoint {final} ({err.strerror or err}); {hint}"
            ) from err
        self.prune()
        return final

    def _point_latest_to(self, name: str) -> None:
        tmp = self.root / f".{LATEST}.tmp"
        with open(tmp, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / LATEST)
        _fsync_path(self.root)

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("step-*") if p.is_dir() and is_complete(p)]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        """The checkpoint ``latest`` names if complete, else the newest complete one."""
        pointer = self.root / LATEST
        if pointer.is_file():
            candidate = self.root / pointer.read_text().strip()
            if is_complete(candidate):
                return candidate
        done = self.complete_checkpoints()
        return done[-1] if done else None

    def refuse_existing_run(self) -> None:
        """Raise :class:`RunExistsError` when a complete checkpoint exists: a run started without
        ``--resume`` would silently overwrite it."""
        found = self.latest()
        if found is not None:
            out = self.root.parent
            raise RunExistsError(
                f"{out} already holds a run (checkpoint {found.name}); continue it with "
                f"--resume latest, or start a new run with --output-dir NEW_FOLDER (or delete {out})"
            )

    def resolve(self, spec: str) -> Path:
        """``latest`` or a checkpoint folder path -> a complete checkpoint folder."""
        if spec == LATEST:
            found = self.latest()
            if found is None:
                raise SanakitError(f"--resume latest: no complete checkpoint under {self.root}")
            return found
        path = Path(spec)
        if not is_complete(path):
            raise SanakitError(
                f"--resume {spec}: not a complete checkpoint folder (no valid {MANIFEST})"
            )
        return path

    def prune(self) -> None:
        done = self.complete_checkpoints()
        keep = set(done[-self.keep_last :])
        latest = self.latest()
        if latest is not None:
            keep.add(latest)
        for path in done:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):
            if not stale.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stale, ignore_errors=True)
