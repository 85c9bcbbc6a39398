"""hf: a Hugging Face Hub repo `user/model_name`, fetched with the real `huggingface_hub.snapshot_download`.

Everything huggingface_hub honours applies: HF_TOKEN or the token of `hf auth login` for private and gated
repos, HF_ENDPOINT (a mirror or a private Hub), HF_HOME / HF_HUB_CACHE (the cache), HF_HUB_OFFLINE=1 (use the
cache only). Only the files a conversion needs are downloaded: configs, tokenizer files and the PyTorch
weights (safetensors, else pytorch_model*.bin), never TF/Flax/ONNX copies.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .base import Artifact, Fetched, FetchRequest, Storage, StorageError

LOGGER = logging.getLogger(__name__)

TOKENIZER_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.vocab"]
SAFETENSORS_PATTERNS = ["*.safetensors"]
BIN_PATTERNS = ["pytorch_model*.bin"]
TOKEN_HINT = "set HF_TOKEN (or run `hf auth login`)"


def _snapshot(request: FetchRequest, patterns: list[str]) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what, repo, revision = request.artifact.value, request.source, request.revision or "main"
    try:
        return Path(snapshot_download(repo_id=repo, revision=revision, allow_patterns=patterns))
    except HFValidationError as err:
        raise StorageError(f"{what}: '{repo}' is not a Hugging Face Hub repo id ({err}); "
                           "pass it as user/model_name, e.g. --model cointegrated/rubert-tiny2") from err
    except GatedRepoError as err:
        raise StorageError(f"{what}: Hub repo '{repo}' is gated; accept its conditions on its Hub page, "
                           f"then {TOKEN_HINT}") from err
    except RepositoryNotFoundError as err:
        raise StorageError(f"{what}: Hub repo '{repo}' was not found at {constants.ENDPOINT} (or it is private "
                           f"and no valid token was sent); check the id (user/model_name), or {TOKEN_HINT} "
                           "for a private repo") from err
    except RevisionNotFoundError as err:
        raise StorageError(f"{what}: revision '{revision}' was not found in Hub repo '{repo}'; pass an existing "
                           f"branch, tag or commit with --{what}-revision, or drop it for 'main'") from err
    except LocalEntryNotFoundError as err:
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{constants.ENDPOINT} cannot be reached"
        raise StorageError(f"{what}: Hub repo '{repo}' (revision '{revision}') is not complete in the Hub cache "
                           f"{constants.HF_HUB_CACHE} and {reason}; run once with network access (unset "
                           "HF_HUB_OFFLINE), or point HF_HOME / HF_HUB_CACHE at a cache that holds it") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "an error"
        raise StorageError(f"{what}: the Hub at {constants.ENDPOINT} answered {status} for '{repo}' "
                           f"(revision '{revision}'): {err}; check HF_ENDPOINT and the token, then retry") from err
    except OSError as err:  # connection errors that huggingface_hub passes through (e.g. a proxy failure)
        raise StorageError(f"{what}: cannot download '{repo}' from {constants.ENDPOINT} ({err}); check the "
                           "network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the Hub cache") from err


def fetch(request: FetchRequest) -> Fetched:
    from huggingface_hub import constants

    LOGGER.info("Fetching %s '%s' (revision %s) from the Hugging Face Hub at %s%s, cache %s",
                request.artifact.value, request.source, request.revision or "main", constants.ENDPOINT,
                " (offline)" if constants.HF_HUB_OFFLINE else "", constants.HF_HUB_CACHE)
    if request.artifact is Artifact.TOKENIZER:
        path = _snapshot(request, TOKENIZER_PATTERNS)
    else:
        path = _snapshot(request, TOKENIZER_PATTERNS + SAFETENSORS_PATTERNS)
        if not any(path.glob("*.safetensors")):
            LOGGER.info("No safetensors weights in '%s'; fetching pytorch_model*.bin", request.source)
            path = _snapshot(request, TOKENIZER_PATTERNS + BIN_PATTERNS)
    commit = path.name if path.parent.name == "snapshots" else "unknown commit"
    LOGGER.info("Fetched '%s' at commit %s into %s", request.source, commit, path)
    return Fetched(path=path, resolved=f"{request.source}@{commit}")


STORAGE = Storage(
    name="hf",
    summary="a Hugging Face Hub repo user/model_name (HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE honoured)",
    example="--model cointegrated/rubert-tiny2 --model-storage hf --model-revision main",
    fetch=fetch,
)
