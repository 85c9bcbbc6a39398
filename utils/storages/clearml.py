"""clearml: a ClearML model id, or `TASK_ID:ARTIFACT_NAME` for a task artifact, fetched with the real SDK.

The model (or artifact) must hold the directory written by `save_pretrained`, registered as a package
(`OutputModel.update_weights_package(weights_path=DIR)`) or uploaded as a folder artifact
(`task.upload_artifact(name, artifact_object=DIR)`); a zip or tar archive of that directory works too.
Credentials come from the environment (CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY,
CLEARML_FILES_HOST) or from clearml.conf (`clearml-init`); downloads are cached in ClearML's cache.
"""
from __future__ import annotations

import logging
import os
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from .base import Fetched, FetchRequest, Storage, StorageError

LOGGER = logging.getLogger(__name__)

CREDENTIALS_HINT = ("set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY (and CLEARML_FILES_HOST), "
                    "or run `clearml-init` to write ~/clearml.conf")
PACKAGE_HINT = ("register the directory written by save_pretrained() with OutputModel.update_weights_package("
                "weights_path=DIR) or task.upload_artifact(NAME, artifact_object=DIR)")


def _setting(env: str, key: str) -> str:
    from clearml.config import config_obj

    return os.environ.get(env) or str(config_obj.get(key, None) or "")


def _check_credentials(what: str) -> str:
    """Returns the API host; raises StorageError naming what is missing before the SDK tries to connect."""
    if os.environ.get("CLEARML_AUTH_TOKEN"):
        return _setting("CLEARML_API_HOST", "api.api_server")
    missing = [env for env, key in (("CLEARML_API_ACCESS_KEY", "api.credentials.access_key"),
                                    ("CLEARML_API_SECRET_KEY", "api.credentials.secret_key"))
               if not _setting(env, key)]
    if missing:
        raise StorageError(f"{what}: ClearML credentials are missing ({', '.join(missing)} not set and not in "
                           f"clearml.conf); {CREDENTIALS_HINT}")
    return _setting("CLEARML_API_HOST", "api.api_server") or "https://api.clear.ml"


def _model_copy(model_id: str, what: str, host: str) -> str:
    from clearml import InputModel

    model = InputModel(model_id=model_id)
    try:
        name, url = model.name, model.url
    except AttributeError as err:  # the SDK logs the server's answer and leaves the model data empty
        raise StorageError(f"{what}: no ClearML model with id '{model_id}' at {host}; copy the id from the "
                           "model's page in the ClearML web app (for a task artifact pass TASK_ID:ARTIFACT_NAME)"
                           ) from err
    LOGGER.info("Downloading ClearML model '%s' (%s) from %s", name, model_id, url)
    return model.get_local_copy(extract_archive=True, raise_on_error=True)


def _artifact_copy(task_id: str, artifact: str, what: str, host: str) -> str:
    from clearml import Task

    try:
        task = Task.get_task(task_id=task_id)
    except ValueError as err:
        raise StorageError(f"{what}: no ClearML task with id '{task_id}' at {host}; copy the id from the task's "
                           "page in the ClearML web app") from err
    artifacts: dict[str, Any] = dict(task.artifacts)
    if artifact not in artifacts:
        raise StorageError(f"{what}: ClearML task '{task_id}' has no artifact '{artifact}' (it has "
                           f"{sorted(artifacts) or 'none'}); pass TASK_ID:ARTIFACT_NAME with one of them")
    LOGGER.info("Downloading artifact '%s' of ClearML task '%s' from %s", artifact, task_id, artifacts[artifact].url)
    return artifacts[artifact].get_local_copy(extract_archive=True, raise_on_error=True)


def _as_directory(local: Path, scratch: Path, what: str, source: str) -> Path:
    """The save_pretrained directory inside what the SDK returned (a folder, or an archive it left packed)."""
    if local.is_file():
        target = scratch / "extracted"
        if zipfile.is_zipfile(local):
            with zipfile.ZipFile(local) as archive:
                archive.extractall(target)
        elif tarfile.is_tarfile(local):
            with tarfile.open(local) as archive:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse unsafe members
                    archive.extractall(target, filter="data")
                else:
                    archive.extractall(target)
        else:
            raise StorageError(f"{what}: ClearML '{source}' is a single file ({local.name}), not a model "
                               f"directory; {PACKAGE_HINT}")
        local = target
    entries = [entry for entry in local.iterdir() if not entry.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():  # an archive of the directory itself, not of its content
        return entries[0]
    return local


def fetch(request: FetchRequest) -> Fetched:
    what, source = request.artifact.value, request.source.strip()
    if request.revision:
        raise StorageError(f"--{what}-revision does not apply to ClearML (ids are immutable); drop it")
    host = _check_credentials(what)
    from clearml.backend_api.session.defs import MissingConfigError
    from clearml.backend_api.session.session import LoginError

    task_id, _, artifact = source.partition(":")
    LOGGER.info("Fetching %s '%s' from ClearML at %s", what, source, host)
    try:
        local = _artifact_copy(task_id, artifact, what, host) if artifact else _model_copy(source, what, host)
    except MissingConfigError as err:
        raise StorageError(f"{what}: ClearML is not configured; {CREDENTIALS_HINT}") from err
    except LoginError as err:
        raise StorageError(f"{what}: ClearML at {host} rejected the credentials ({err}); check "
                           "CLEARML_API_ACCESS_KEY / CLEARML_API_SECRET_KEY (or clearml.conf)") from err
    except ValueError as err:  # the SDK's way to say a download failed
        raise StorageError(f"{what}: cannot download ClearML '{source}' ({err}); check that its files are "
                           "still on the files server and that CLEARML_FILES_HOST is reachable") from err
    if not local:
        raise StorageError(f"{what}: ClearML '{source}' has no file attached; {PACKAGE_HINT}")
    path = _as_directory(Path(local), request.scratch, what, source)
    LOGGER.info("Fetched ClearML '%s' into %s", source, path)
    return Fetched(path=path, resolved=f"clearml:{source}")


STORAGE = Storage(
    name="clearml",
    summary="a ClearML model id, or TASK_ID:ARTIFACT_NAME for a task artifact (CLEARML_* env or clearml.conf)",
    example="--model 4c1a8e0f2d6b4b1e9f3a7c5d2e8b6a10 --model-storage clearml",
    fetch=fetch,
)
