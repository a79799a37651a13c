"""Content-addressed tensor storage: safetensors shards plus a JSON index with checksums.

Layout of a store folder::

    index.json                       {"version": 1, "shards": {file: {"kind", "sha256",
                                      "bytes", "keys": [...]}}}
    latents-<id>.safetensors         tensors named "<key>/<field>" ("latent", "mask")
    text-<id>.safetensors            tensors named "<key>/<field>" ("embeds", "mask")

A shard is written to a temporary file, renamed, and only then added to the index (itself
written atomically), so an interrupted build leaves complete shards and at worst an orphan file,
which the next open deletes. :meth:`ShardStore.verify` drops shards that are missing, have the
wrong size or (with ``full``) the wrong SHA-256, so their entries are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save

__all__ = ["ShardReader", "ShardStore", "ShardWriter"]

INDEX_NAME = "index.json"
_VERSION = 1


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ShardStore:
    """The index of a store folder: which shard holds which key."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shards: dict[str, dict[str, Any]] = {}
        self._where: dict[str, str] = {}
        path = self.root / INDEX_NAME
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("version") == _VERSION and isinstance(data.get("shards"), dict):
                    self.shards = data["shards"]
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                self.shards = {}  # an unreadable index only costs a rebuild
        self._reindex()

    def _reindex(self) -> None:
        self._where = {key: name for name, info in self.shards.items() for key in info["keys"]}

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def shard_of(self, key: str) -> str:
        return self._where[key]

    def save_index(self) -> None:
        blob = json.dumps({"version": _VERSION, "shards": self.shards}, separators=(",", ":"))
        _write_atomic(self.root / INDEX_NAME, blob.encode())

    def verify(self, full: bool = True) -> list[str]:
        """Drops shards that are missing, of the wrong size, unreadable as safetensors or (when
        ``full``) whose SHA-256 differs from the index; deletes their files and orphan files.
        Returns the dropped shard names (their keys will be recomputed)."""
        dropped = []
        for name, info in list(self.shards.items()):
            path = self.root / name
            ok = path.is_file() and path.stat().st_size == info["bytes"]
            if ok and full:
                ok = _sha256_file(path) == info["sha256"]
            if ok:
                try:
                    with safe_open(str(path), framework="pt") as fh:
                        ok = len(list(fh.keys())) > 0
                except (SafetensorError, OSError):
                    ok = False
            if not ok:
                dropped.append(name)
                del self.shards[name]
                path.unlink(missing_ok=True)
        for path in self.root.glob("*.safetensors"):
            if path.name not in self.shards:
                path.unlink(missing_ok=True)
        for path in self.root.glob(".*.tmp"):
            path.unlink(missing_ok=True)
        if dropped:
            self.save_index()
        self._reindex()
        return dropped

    def add_shard(self, kind: str, tensors: dict[str, torch.Tensor], keys: list[str]) -> str:
        """Writes one shard and records it in the index; returns its file name."""
        data = safetensors_save(tensors, metadata={"kind": kind})
        name = f"{kind}-{uuid.uuid4().hex[:16]}.safetensors"
        _write_atomic(self.root / name, data)
        self.shards[name] = {
            "kind": kind,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "keys": keys,
        }
        for key in keys:
            self._where[key] = name
        self.save_index()
        return name


class ShardWriter:
    """Buffers entries ``key -> {field: tensor}`` and writes a shard whenever the buffer reaches
    ``shard_bytes``; :meth:`close` writes the remainder. Entries are only durable once their
    shard is written (an exception before that loses just the buffer)."""

    def __init__(self, store: ShardStore, kind: str, shard_bytes: int) -> None:
        self.store, self.kind, self.shard_bytes = store, kind, max(1, int(shard_bytes))
        self._tensors: dict[str, torch.Tensor] = {}
        self._keys: list[str] = []
        self._size = 0
        self.written: list[str] = []

    def add(self, key: str, fields: dict[str, torch.Tensor]) -> None:
        if key in self.store or key in self._keys:
            return
        for field_name, tensor in fields.items():
            tensor = tensor.detach().to("cpu").contiguous()
            self._tensors[f"{key}/{field_name}"] = tensor
            self._size += tensor.numel() * tensor.element_size()
        self._keys.append(key)
        if self._size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if self._keys:
            self.written.append(self.store.add_shard(self.kind, self._tensors, self._keys))
        self._tensors, self._keys, self._size = {}, [], 0

    close = flush


class ShardReader:
    """Reads entries by key through memory-mapped safetensors handles (opened lazily and kept
    open). Picklable: handles are reopened in each DataLoader worker."""

    def __init__(self, root: str | Path, where: dict[str, str]) -> None:
        self.root = Path(root)
        self.where = where
        self._handles: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "where": self.where, "_handles": {}}

    def _handle(self, shard: str) -> Any:
        handle = self._handles.get(shard)
        if handle is None:
            handle = safe_open(str(self.root / shard), framework="pt")
            self._handles[shard] = handle
        return handle

    def get(self, key: str, field_name: str) -> torch.Tensor:
        return self._handle(self.where[key]).get_tensor(f"{key}/{field_name}")

    @staticmethod
    def from_store(store: ShardStore, keys: Iterable[str] | None = None) -> ShardReader:
        where = store._where if keys is None else {k: store.shard_of(k) for k in keys}
        return ShardReader(store.root, dict(where))
