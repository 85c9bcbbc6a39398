"""Storages a model or tokenizer can be fetched from, one small module each.

Every module in this package except `base` defines `STORAGE = Storage(name, summary, example, fetch)`;
`fetch(FetchRequest) -> Path` returns a local directory laid out as `save_pretrained` writes it, or raises
`StorageError` with one message naming the problem and the fix. Adding a storage (S3, W&B, ...) means adding
one such module here: the registry below finds it, and `--model-storage`/`--tokenizer-storage` offer it.
Modules import their SDK inside `fetch`, so listing the storages stays cheap.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Artifact, Fetched, FetchRequest, Storage, StorageError

__all__ = ["Artifact", "Fetched", "FetchRequest", "Storage", "StorageError", "available_storages"]

_NOT_STORAGES = {"base"}


def available_storages() -> dict[str, Storage]:
    """Name -> Storage for every storage module of this package, in a stable order (local first)."""
    found: dict[str, Storage] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name != "local", m.name)):
        if info.name in _NOT_STORAGES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        storage = getattr(module, "STORAGE", None)
        if isinstance(storage, Storage):
            found[storage.name] = storage
    return found
