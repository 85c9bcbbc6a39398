"""local: a directory on disk written by `save_pretrained` (for example a `Trainer` output or checkpoint)."""
from __future__ import annotations

from pathlib import Path

from .base import Fetched, FetchRequest, Storage, StorageError


def fetch(request: FetchRequest) -> Fetched:
    what = request.artifact.value
    path = Path(request.source).expanduser()
    if request.revision:
        raise StorageError(f"--{what}-revision does not apply to a local directory ({request.source}); "
                           f"drop it, or use --{what}-storage hf for a Hub repo")
    if not path.exists():
        raise StorageError(f"{what}: no such directory: {path}; pass the directory written by save_pretrained() "
                           "(e.g. a Trainer output or checkpoint directory)")
    if not path.is_dir():
        raise StorageError(f"{what}: {path} is a file, not a directory; pass the directory that holds it, "
                           "as save_pretrained() writes it")
    resolved = path.resolve()
    return Fetched(path=resolved, resolved=str(resolved))


STORAGE = Storage(
    name="local",
    summary="a directory written by save_pretrained() / Trainer",
    example="--model ./results/checkpoint-500 --model-storage local",
    fetch=fetch,
)
