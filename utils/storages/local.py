"""local: a directory on disk written by `save_pretrained` (for example a `Trainer` output or checkpoint)."""
from __future__ import annotations

import re
from pathlib import Path

from .base import Fetched, FetchRequest, Storage, StorageError


# user/model_name as the Hub spells repo ids: letters, digits, - _ . (not first or last), one slash.
HUB_ID = re.compile(r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?/[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?")


def looks_like_hub_id(source: str) -> bool:
    """Whether a path that does not exist is more likely a Hub repo id (user/model_name) than a typo."""
    return len(source) <= 96 and HUB_ID.fullmatch(source) is not None and ".." not in source and "--" not in source


def fetch(request: FetchRequest) -> Fetched:
    what = request.artifact.value
    path = Path(request.source).expanduser()
    if request.revision:
        raise StorageError(f"--{what}-revision does not apply to a local directory ({request.source}); "
                           f"drop it, or use --{what}-storage hf for a Hub repo")
    if not path.exists():
        if looks_like_hub_id(request.source):
            raise StorageError(f"{what}: no such directory: {path}; '{request.source}' looks like a Hugging Face Hub "
                               f"repo id: add --{what}-storage hf to fetch it from the Hub (or pass the local "
                               "directory written by save_pretrained())")
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
