"""The repository manifest `tritoned.json` (written by make_triton_image.sh at the root of every assembled model
repository): the served model's facts for the run-time side, read here once. Standard library only.

Format 2 added the member `sizing` (it was the separate file sizing.json): which sizes the build fixed and which
are "auto" (gateway/sizing.py chooses those at start), and whether model_onnx may batch requests together. Format 3
added `functions`: the output functions post_processing applies (their one home: model_repository/tritoned_heads.py,
which the gateway does not import: it is not in the image's gateway, and it needs numpy)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FILE_NAME = "tritoned.json"
FORMAT = 3
# tritonserver's option naming the model repository, and its old alias: the gateway passes the repository it serves
# (python -m gateway --repository DIR, gateway/settings.py) as REPOSITORY_OPTION=DIR; no script spells it.
REPOSITORY_OPTION = "--model-repository"
REPOSITORY_OPTIONS = (REPOSITORY_OPTION, "--model-store")
FIX = "rebuild the repository with ./make_triton_image.sh (it writes the manifest)"


AUTO = "auto"
# The sizes the build may fix (make_triton_image.sh --preprocessing-instances, ...) and the least each may be.
SIZE_MINIMUMS = {"preprocessing_instances": 1, "model_instances": 1, "ort_threads": 0, "batch_delay_us": 0,
                 "busy_ort_threads": 0}


class ManifestError(ValueError):
    """A missing or malformed manifest; the message names the file and the fix."""


@dataclass(frozen=True)
class BuildSizing:
    """The manifest's `sizing`: what the build fixed (None = auto), and whether model_onnx may batch requests."""
    model_instances: int | None = None
    ort_threads: int | None = None
    preprocessing_instances: int | None = None
    batch_delay_us: int | None = None
    busy_ort_threads: int | None = None
    model_batching: bool = True

    def explicit(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "model_batching" and v is not None}


@dataclass(frozen=True)
class Manifest:
    ensemble: str
    functions: tuple[str, ...]  # the output functions post_processing applies (function_to_apply of a request)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    string_outputs: tuple[str, ...]
    max_batch_size: int
    labels: tuple[str, ...]
    function_to_apply: str
    pipeline_function: str
    label_threshold: float | None
    max_sequence_length: int
    triton_release: str | None
    sizing: BuildSizing
    format: int = FORMAT

    @property
    def takes_pairs(self) -> bool:
        return "text_pair" in self.inputs

    @property
    def is_reranker(self) -> bool:
        """A cross-encoder: one logit over a text pair (TEI's /rerank)."""
        return self.takes_pairs and len(self.labels) == 1


def _field(data: dict[str, Any], name: str, kinds: type | tuple[type, ...], path: Path, nullable: bool = False) -> Any:
    if name not in data:
        raise ManifestError(f"{path}: member '{name}' is missing; {FIX}")
    value = data[name]
    if value is None and nullable:
        return None
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise ManifestError(f"{path}: member '{name}' has the wrong type ({type(value).__name__}); {FIX}")
    return value


def _strings(data: dict[str, Any], name: str, path: Path) -> tuple[str, ...]:
    value = _field(data, name, list, path)
    if not all(isinstance(item, str) for item in value):
        raise ManifestError(f"{path}: member '{name}' must be a list of strings; {FIX}")
    return tuple(value)


def _sizing(data: dict[str, Any], path: Path) -> BuildSizing:
    sizing = _field(data, "sizing", dict, path)
    values: dict[str, int | None] = {}
    for name, minimum in SIZE_MINIMUMS.items():
        value = sizing.get(name, AUTO)
        if value == AUTO:
            values[name] = None
        elif isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            values[name] = value
        else:
            raise ManifestError(f"{path}: sizing.{name} must be \"{AUTO}\" or an integer >= {minimum}, got {value!r}; "
                                f"{FIX}")
    batching = sizing.get("model_batching", True)
    if not isinstance(batching, bool):
        raise ManifestError(f"{path}: sizing.model_batching must be true or false, got {batching!r}; {FIX}")
    unknown = sorted(set(sizing) - set(SIZE_MINIMUMS) - {"model_batching"})
    if unknown:
        raise ManifestError(f"{path}: sizing has unknown member(s) {', '.join(unknown)}; {FIX}")
    return BuildSizing(**values, model_batching=batching)


def parse(data: Any, path: Path) -> Manifest:
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a JSON object; {FIX}")
    if data.get("format") != FORMAT:
        raise ManifestError(f"{path}: format {data.get('format')!r} is not {FORMAT}, the one this gateway reads; {FIX}")
    known = _strings(data, "functions", path)
    functions = {name: _field(data, name, str, path) for name in ("function_to_apply", "pipeline_function")}
    for name, value in functions.items():
        if value not in known:
            raise ManifestError(f"{path}: '{name}' is {value!r}, not one of {', '.join(known)}; {FIX}")
    manifest = Manifest(
        ensemble=_field(data, "ensemble", str, path), functions=known, inputs=_strings(data, "inputs", path),
        outputs=_strings(data, "outputs", path), string_outputs=_strings(data, "string_outputs", path),
        max_batch_size=_field(data, "max_batch_size", int, path), labels=_strings(data, "labels", path),
        function_to_apply=functions["function_to_apply"], pipeline_function=functions["pipeline_function"],
        label_threshold=_field(data, "label_threshold", (int, float), path, nullable=True),
        max_sequence_length=_field(data, "max_sequence_length", int, path),
        triton_release=_field(data, "triton_release", str, path, nullable=True), sizing=_sizing(data, path))
    if not manifest.labels or manifest.max_batch_size < 1 or manifest.max_sequence_length < 1:
        raise ManifestError(f"{path}: 'labels' must not be empty and 'max_batch_size', 'max_sequence_length' must be "
                            f"positive; {FIX}")
    if "text_input" not in manifest.inputs or "probabilities" not in manifest.outputs:
        raise ManifestError(f"{path}: the ensemble must take 'text_input' and answer 'probabilities'; {FIX}")
    return manifest


def load(repository_dir: Path | str) -> Manifest:
    """The manifest of a model repository; ManifestError naming the file and the fix when missing or malformed."""
    path = Path(repository_dir) / FILE_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist: the model repository has no manifest; {FIX}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path} cannot be read ({error}); {FIX}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ManifestError(f"{path} is not valid JSON ({error}); {FIX}") from None
    return parse(data, path)


def repository_arguments(command: list[str]) -> list[tuple[int, int, str]]:
    """Where tritonserver's arguments name a model repository (--model-repository=DIR or --model-repository DIR, or
    the alias): (index, number of words, DIR) for each."""
    found: list[tuple[int, int, str]] = []
    for index, arg in enumerate(command):
        name, equals, value = arg.partition("=")
        if name in REPOSITORY_OPTIONS:
            if equals:
                found.append((index, 1, value))
            elif index + 1 < len(command):
                found.append((index, 2, command[index + 1]))
    return found


def repository_of(command: list[str]) -> Path | None:
    """The model repository named by tritonserver's arguments; None when there is none (or several: the manifest of
    which would be ambiguous)."""
    found = repository_arguments(command)
    return Path(found[0][2]) if len(found) == 1 else None


def with_repository(command: list[str], repository: Path | str) -> list[str]:
    """The tritonserver command serving `repository`: its one repository argument replaced, or (none given) added
    right after the executable."""
    found = repository_arguments(command)
    if len(found) > 1:
        raise ValueError(f"tritonserver's arguments name {len(found)} model repositories")
    argument = f"{REPOSITORY_OPTION}={repository}"
    if not found:
        return [*command[:1], argument, *command[1:]]
    index, words, _ = found[0]
    return [*command[:index], argument, *command[index + words:]]
