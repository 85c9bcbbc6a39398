"""What every storage module provides: one `STORAGE = Storage(...)` that fetches a source into a local directory."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable


class Artifact(str, Enum):
    """What is being fetched; a storage may download less for a tokenizer than for a model."""

    MODEL = "model"
    TOKENIZER = "tokenizer"


class StorageError(Exception):
    """A source cannot be fetched; the message names the problem and the fix."""


@dataclass(frozen=True)
class FetchRequest:
    """One thing to fetch.

    source: what the user typed after --model/--tokenizer (a path, a Hub repo id, a ClearML id).
    revision: a branch, tag or commit where the storage has versions, else None.
    artifact: model or tokenizer.
    scratch: an empty directory the storage may download or extract into; it is deleted after conversion.
    """

    source: str
    revision: str | None
    artifact: Artifact
    scratch: Path


@dataclass(frozen=True)
class Fetched:
    """A fetched source: the local directory, and what exactly was fetched (e.g. the resolved Hub commit)."""

    path: Path
    resolved: str


@dataclass(frozen=True)
class Storage:
    """A place models live. `fetch` returns a local directory in the layout `save_pretrained` writes."""

    name: str
    summary: str
    example: str
    fetch: Callable[[FetchRequest], Fetched]
