#!/usr/bin/env python3
"""Convert a fine-tuned Hugging Face sequence classifier into the three inputs of make_triton_image.sh.

The model and its tokenizer are fetched from a storage each (local directory, Hugging Face Hub, ClearML),
the model is exported to ONNX, and PyTorch and ONNX Runtime are compared on probe texts before anything is
written. OUTPUT_DIR then holds exactly:

  model.onnx              int64 input_ids, attention_mask [+ token_type_ids], output logits, dynamic axes
  tokenizer/              tokenizer.json (fast) + tokenizer_config.json, as save_pretrained writes them
  id2label.json           {"0": "label", ..., "N-1": "label"}
  conversion_report.json  source, architecture, opset, max_sequence_length, problem_type, function_to_apply
                          (what the HF text-classification pipeline applies to the logits), inputs, parity on
                          single texts and on text pairs

Everything is built in a temporary directory next to OUTPUT_DIR and moved into place only on success.
--fuse and --quantize (utils/onnx_optimize.py) then speed model.onnx up, each checked before it is kept; the
report's "optimization" entry records what was done and the figures.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

if __package__ in (None, ""):  # run as `python utils/convert_to_onnx.py`: make `utils` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model_repository.tritoned_heads import LabelError, check_id2label, id2label_json, load_json, pipeline_function
from utils.onnx_export import (OUTPUT_NAME, ExportError, architecture_of, check_exported, check_opset, export_onnx,
                               select_inputs)
from utils.onnx_optimize import (DEFAULT_MAX_PROB_DIFF, DEFAULT_MIN_AGREEMENT, AgreementFigures, OptimizationError,
                                 OptimizeOptions, ServedInputs, optimize)
from utils.parity import ParityError, ParityFigures, check_pair_parity, check_parity, encode_reference, pad_batch
from utils.storages import Artifact, Fetched, FetchRequest, StorageError, available_storages

LOGGER = logging.getLogger("convert_to_onnx")

MODEL_FILE = "model.onnx"
TOKENIZER_DIR = "tokenizer"
ID2LABEL_FILE = "id2label.json"
REPORT_FILE = "conversion_report.json"
ARTIFACTS = (MODEL_FILE, TOKENIZER_DIR, ID2LABEL_FILE, REPORT_FILE)
DEFAULT_OPSET = 17
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "spm.model", "tokenizer.model")
SANE_MAX_LENGTH = 1_000_000  # transformers writes a huge sentinel when a tokenizer has no limit
FALLBACK_MAX_LENGTH = 512
NOISY_LOGGERS = ("httpx", "httpx2", "urllib3", "filelock")
EXPORT_SAMPLE_TEXTS = ("tritoned export sample: a sentence with several words, в том числе русских", "hi")


class ConversionError(Exception):
    """A problem with the inputs of a conversion; the message names the problem and the fix."""


CONVERSION_ERRORS = (ConversionError, StorageError, ExportError, ParityError, OptimizationError)


@dataclass(frozen=True)
class Source:
    """Where a model or tokenizer lives: a location understood by `storage`, optionally at a revision."""

    location: str
    storage: str = "local"
    revision: str | None = None

    def describe(self) -> str:
        return f"{self.storage}:{self.location}" + (f"@{self.revision}" if self.revision else "")


# ---------------------------------------------------------------------------------------------- output directory

def check_output_dir(output_dir: Path) -> None:
    """OUTPUT_DIR may be new, empty, or a previous conversion's output (which is replaced); nothing else."""
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ConversionError(f"--output-dir {output_dir} is a file; pass a directory (new or empty)")
    foreign = sorted(entry.name for entry in output_dir.iterdir() if entry.name not in ARTIFACTS)
    if foreign:
        raise ConversionError(f"--output-dir {output_dir} already holds other files ({', '.join(foreign[:5])}); "
                              "pass a new or empty directory (only a previous conversion's output is replaced)")


@contextlib.contextmanager
def staging_area(output_dir: Path) -> Iterator[Path]:
    """A temporary directory beside OUTPUT_DIR (same file system, so the final move is atomic), always removed."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def publish(staged: Path, output_dir: Path, staging_root: Path) -> None:
    """Move the finished artifacts into OUTPUT_DIR, replacing a previous conversion's output."""
    check_output_dir(output_dir)
    if output_dir.exists():
        os.replace(output_dir, staging_root / "previous-output")  # removed with the staging area
    os.replace(staged, output_dir)


# ------------------------------------------------------------------------------------------------------ fetching

def fetch(source: Source, artifact: Artifact, scratch: Path) -> Fetched:
    storages = available_storages()
    if source.storage not in storages:
        raise ConversionError(f"unknown --{artifact.value}-storage '{source.storage}'; choose one of "
                              f"{', '.join(storages)}")
    scratch.mkdir(parents=True, exist_ok=True)
    return storages[source.storage].fetch(FetchRequest(source.location, source.revision, artifact, scratch))


def check_model_dir(path: Path, source: Source) -> None:
    if not (path / "config.json").is_file():
        checkpoints = sorted(entry.name for entry in path.iterdir()
                             if entry.is_dir() and (entry / "config.json").is_file())
        hint = (f"it holds {', '.join(checkpoints[:3])}: pass one of those directories" if checkpoints else
                "pass the directory written by model.save_pretrained() or Trainer.save_model()")
        raise ConversionError(f"model: {source.describe()} holds no model (no config.json in {path}); {hint}")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ConversionError(f"model: {source.describe()} has config.json but no weights "
                              f"({' or '.join(WEIGHT_FILES[::2])} in {path}); save the model with save_pretrained() "
                              "and pass that directory")


def check_tokenizer_dir(path: Path, source: Source) -> None:
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConversionError(f"tokenizer: {source.describe()} holds no tokenizer (none of "
                              f"{', '.join(TOKENIZER_FILES[:4])}... in {path}); pass the directory written by "
                              "tokenizer.save_pretrained() with --tokenizer (and --tokenizer-storage)")


# ------------------------------------------------------------------------------------------- labels and limits

def read_id2label_file(path: Path) -> list[str]:
    """--id2label FILE: an id2label object, or a config.json-like file holding one as its "id2label" member; the
    rules are model_repository/tritoned_heads.py's."""
    try:
        data = load_json(path, "--id2label")
        if isinstance(data, dict) and isinstance(data.get("id2label"), dict):  # a config.json-like file
            data = data["id2label"]
        return check_id2label(data, "--id2label", str(path), "fix the names in the file")
    except FileNotFoundError as err:
        raise ConversionError(f"--id2label: no such file: {path}") from err
    except LabelError as err:
        raise ConversionError(str(err)) from err


def resolve_labels(config: Any, id2label_file: Path | None) -> tuple[dict[str, str], str]:
    """The label names and where they came from; the file wins when its size matches num_labels."""
    num_labels = int(config.num_labels)
    from_config = {int(key): str(value) for key, value in (config.id2label or {}).items()}
    if id2label_file is None:
        if sorted(from_config) != list(range(num_labels)):
            raise ConversionError(f"model: config.id2label {from_config} does not name the model's {num_labels} "
                                  "labels; pass --id2label FILE with the names")
        try:
            names = check_id2label({str(key): name for key, name in from_config.items()}, "model: config.id2label",
                                   "the model's config", "pass --id2label FILE with other names")
        except LabelError as err:
            raise ConversionError(str(err)) from err
        if all(name == f"LABEL_{key}" for key, name in enumerate(names)):
            LOGGER.warning("The model's config has only generic label names (LABEL_0...); pass --id2label FILE "
                           "to serve real names")
        return id2label_json(names), "config.id2label"
    from_file = read_id2label_file(id2label_file)
    if len(from_file) != num_labels:
        raise ConversionError(f"--id2label: {id2label_file} names {len(from_file)} labels but the model outputs "
                              f"{num_labels} logits (config.num_labels = {num_labels}, config.id2label = "
                              f"{ {str(k): v for k, v in sorted(from_config.items())} }); fix the file to name "
                              f"exactly {num_labels} classes \"0\"..\"{num_labels - 1}\", or omit --id2label to "
                              "use the model's config")
    differing = [key for key in range(num_labels) if from_config.get(key) != from_file[key]]
    LOGGER.info("id2label: %s agrees with num_labels=%d and wins over config.id2label%s", id2label_file, num_labels,
                f" (it renames {len(differing)} of them)" if differing else " (same names)")
    return id2label_json(from_file), f"file:{id2label_file}"


def problem_type_of(config: Any) -> str | None:
    """config.problem_type as the pipeline reads it (None when unset: then num_labels decides the function)."""
    return str(config.problem_type) if getattr(config, "problem_type", None) else None


def sequence_limits(model: Any, tokenizer: Any) -> dict[str, int]:
    """Every known limit on the sequence length: the tokenizer's, and the position embeddings' (minus the
    RoBERTa-style offset: position ids start after padding_idx there)."""
    limits: dict[str, int] = {}
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < SANE_MAX_LENGTH:
        limits["tokenizer.model_max_length"] = tokenizer_limit
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        embeddings = getattr(model.base_model, "embeddings", None)
        padding_idx = getattr(embeddings, "padding_idx", None)
        roberta_style = padding_idx is not None and hasattr(embeddings, "create_position_ids_from_input_ids")
        offset = padding_idx + 1 if roberta_style else 0
        limits["config.max_position_embeddings" + (f" - {offset}" if offset else "")] = positions - offset
    return limits


# --------------------------------------------------------------------------------------------- loading (torch)

def load_config(path: Path, source: Source) -> Any:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, OSError, KeyError) as err:
        raise ConversionError(f"model: config.json of {source.describe()} is not a transformers model config "
                              f"({err}); pass the directory written by save_pretrained()") from err
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        architectures = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
        raise ExportError(f"architecture {architectures} (model_type '{config.model_type}') cannot be exported: "
                          "AutoModelForSequenceClassification has no text classifier for it; convert a BERT, "
                          "DistilBERT, RoBERTa, XLM-RoBERTa, DeBERTa-v2/v3, ELECTRA, ALBERT or other model that "
                          "AutoModelForSequenceClassification loads")
    return config


def load_model(path: Path, source: Source) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification

    LOGGER.info("Loading the PyTorch model from %s", path)
    attempts: list[dict[str, Any]] = [{"attn_implementation": "eager"}, {}]  # eager attention exports cleanly
    for extra in attempts:
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=torch.float32, output_loading_info=True, **extra)
            break
        except Exception as err:  # transformers raises many types for unloadable checkpoints
            if extra is attempts[-1]:
                raise ConversionError(f"model: cannot load {source.describe()} with AutoModelForSequenceClassification "
                                      f"({type(err).__name__}: {err})") from err
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ConversionError(f"model: {source.describe()} has no trained weights for {', '.join(missing[:4])}"
                              f"{' ...' if len(missing) > 4 else ''}: it is not a fine-tuned {architecture_of(model)} "
                              "(AutoModelForSequenceClassification would initialise them randomly); fine-tune it for "
                              "sequence classification and save it with save_pretrained()")
    return model.eval()


def check_sentencepiece_conversion(path: Path) -> None:
    """A tokenizer with only a SentencePiece model must be converted to tokenizer.json, which needs the protobuf
    module sentencepiece ships; a sentencepiece/protobuf version mismatch breaks it with a misleading error."""
    if (path / "tokenizer.json").is_file() or not any(path.glob("*.model")):
        return
    try:
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401
    except ImportError:
        return  # transformers falls back to its own copy of the proto
    except Exception as err:
        raise ConversionError(f"tokenizer: {path} has only a SentencePiece model, which must be converted to "
                              f"tokenizer.json, but sentencepiece's protobuf module cannot be loaded ({err}); install "
                              "a matching pair (e.g. pip install sentencepiece==0.2.2, or protobuf>=7.36.1)") from err


def to_fast(tokenizer: Any) -> Any:
    """A fast (tokenizers-backed) copy of a slow tokenizer, or a ConversionError saying why there is none."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import convert_slow_tokenizer

    name = type(tokenizer).__name__
    LOGGER.info("Converting the slow tokenizer %s to a fast one (tokenizer.json)", name)
    try:
        backend = convert_slow_tokenizer(tokenizer)
    except Exception as err:  # ValueError for unknown classes, others from individual converters
        raise ConversionError(f"tokenizer: {name} is a slow tokenizer that cannot be converted to a fast one "
                              f"(tokenizer.json), which Triton's preprocessing needs ({err}); use a tokenizer that "
                              "has a fast version") from err
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tokenizer.model_max_length,
                                   model_input_names=list(tokenizer.model_input_names),
                                   padding_side=tokenizer.padding_side, **tokenizer.special_tokens_map)


def load_tokenizer(path: Path, source: Source) -> tuple[Any, bool]:
    """The tokenizer as a fast one, and whether it had to be converted from a slow one."""
    from transformers import AutoTokenizer

    check_sentencepiece_conversion(path)
    LOGGER.info("Loading the tokenizer from %s", path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # tokenizers and converters raise many types
        raise ConversionError(f"tokenizer: cannot load the tokenizer of {source.describe()} ({type(err).__name__}: "
                              f"{err}); pass a directory written by tokenizer.save_pretrained()") from err
    if getattr(tokenizer, "is_fast", False) and getattr(tokenizer, "backend_tokenizer", None) is not None:
        return tokenizer, not (path / "tokenizer.json").is_file()
    return to_fast(tokenizer), True


def save_tokenizer(tokenizer: Any, directory: Path, max_length: int) -> None:
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(str(directory))
    if not (directory / "tokenizer.json").is_file():
        raise ConversionError(f"tokenizer: {type(tokenizer).__name__} did not write tokenizer.json; use a tokenizer "
                              "with a fast version")


# ----------------------------------------------------------------------------------------------------- report

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------- convert

def convert(model: Source, output_dir: Path, tokenizer: Source | None = None, id2label_file: Path | None = None,
            opset: int = DEFAULT_OPSET, optimization: OptimizeOptions | None = None) -> dict[str, Any]:
    """Fetch, export, check parity, and write the artifacts into `output_dir`; returns the report.

    Raises one of CONVERSION_ERRORS with a message naming the problem and the fix; `output_dir` is then left
    exactly as it was.
    """
    output_dir = Path(output_dir).expanduser().absolute()
    check_output_dir(output_dir)
    check_opset(opset)
    if id2label_file is not None:
        read_id2label_file(id2label_file)  # fail before any download
    with staging_area(output_dir) as root:
        fetched_model = fetch(model, Artifact.MODEL, root / "scratch-model")
        check_model_dir(fetched_model.path, model)
        tokenizer_source = tokenizer or model
        fetched_tokenizer = (fetched_model if tokenizer_source == model
                             else fetch(tokenizer_source, Artifact.TOKENIZER, root / "scratch-tokenizer"))
        config = load_config(fetched_model.path, model)
        check_tokenizer_dir(fetched_tokenizer.path, tokenizer_source)
        labels, labels_source = resolve_labels(config, id2label_file)

        torch_model = load_model(fetched_model.path, model)
        hf_tokenizer, converted = load_tokenizer(fetched_tokenizer.path, tokenizer_source)
        input_names = select_inputs(torch_model, hf_tokenizer.model_input_names)
        limits = sequence_limits(torch_model, hf_tokenizer)
        if not limits:
            LOGGER.warning("Neither the tokenizer nor the config limits the sequence length; using %d",
                           FALLBACK_MAX_LENGTH)
        max_length = min(limits.values()) if limits else FALLBACK_MAX_LENGTH
        pad_id = hf_tokenizer.pad_token_id
        pad_id = int(pad_id if pad_id is not None else getattr(config, "pad_token_id", None) or 0)

        staged = root / "output"
        (staged / TOKENIZER_DIR).mkdir(parents=True)
        export_onnx(torch_model, _sample(hf_tokenizer, input_names, max_length, pad_id), input_names,
                    staged / MODEL_FILE, opset)
        check_exported(staged / MODEL_FILE, input_names, int(config.num_labels))
        save_tokenizer(hf_tokenizer, staged / TOKENIZER_DIR, max_length)
        tokenizer_json = staged / TOKENIZER_DIR / "tokenizer.json"
        figures = check_parity(torch_model, hf_tokenizer, staged / MODEL_FILE, tokenizer_json, max_length,
                               input_names, pad_id)
        pair_figures = check_pair_parity(torch_model, hf_tokenizer, staged / MODEL_FILE, tokenizer_json, max_length,
                                         input_names, pad_id)
        optimization = optimization or OptimizeOptions()
        function = pipeline_function(problem_type_of(config), int(config.num_labels))
        optimized = optimize(staged / MODEL_FILE, optimization, config,
                             ServedInputs(tokenizer_json, max_length, input_names, pad_id, function),
                             lambda path: check_parity(torch_model, hf_tokenizer, path, tokenizer_json, max_length,
                                                       input_names, pad_id))
        if optimization.fuse and not optimization.quantize and pair_figures["passed"]:  # pairs on the served graph
            pair_figures = check_pair_parity(torch_model, hf_tokenizer, staged / MODEL_FILE, tokenizer_json,
                                             max_length, input_names, pad_id)
        pair_figures["checked_on"] = ("fp32 export (the int8 model is judged by its agreement with it)"
                                      if optimization.quantize else "model.onnx")

        report = {
            "source": {"model": _source_entry(model, fetched_model),
                       "tokenizer": _source_entry(tokenizer_source, fetched_tokenizer)},
            "architecture": architecture_of(torch_model),
            "model_type": config.model_type,
            "opset": opset,
            "max_sequence_length": max_length,
            "max_sequence_length_limits": limits,
            "problem_type": problem_type_of(config),
            "num_labels": int(config.num_labels),
            "function_to_apply": function,
            "id2label_source": labels_source,
            "inputs": input_names,
            "outputs": [OUTPUT_NAME],
            "tokenizer": {"class": type(hf_tokenizer).__name__, "converted_to_fast": converted, "pad_id": pad_id},
            "model_sha256": sha256_of(staged / MODEL_FILE),
            "parity": figures.as_dict(),
            "pair_parity": pair_figures,
            "optimization": {"fused": optimization.fuse, "quantized": optimization.quantize, **optimized},
            "versions": versions(),
        }
        write_json(staged / ID2LABEL_FILE, labels)
        write_json(staged / REPORT_FILE, report)
        publish(staged, output_dir, root)
    LOGGER.info("Wrote %s", ", ".join(str(output_dir / name) for name in ARTIFACTS))
    return report


def _sample(tokenizer: Any, input_names: Sequence[str], max_length: int, pad_id: int) -> dict[str, Any]:
    """Two encoded texts of different lengths, padded: the traced graph must see padding."""
    import torch

    rows = encode_reference(tokenizer, EXPORT_SAMPLE_TEXTS, min(max_length, 32), input_names)
    return {name: torch.from_numpy(array) for name, array in pad_batch(rows, pad_id).items()}


def _source_entry(source: Source, fetched: Fetched) -> dict[str, Any]:
    return {"storage": source.storage, "location": source.location, "revision": source.revision,
            "resolved": fetched.resolved}


# -------------------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    storages = available_storages()
    examples = "".join(
        f"  # {name}: {storage.summary}\n"
        f"  python utils/convert_to_onnx.py {storage.example} --output-dir build/artifacts\n\n"
        for name, storage in storages.items())
    examples += ("  # model and tokenizer in different places\n"
                 "  python utils/convert_to_onnx.py --model 4c1a8e0f2d6b4b1e9f3a7c5d2e8b6a10 \\\n"
                 "      --model-storage clearml \\\n"
                 "      --tokenizer cointegrated/rubert-tiny2 --tokenizer-storage hf --id2label labels.json "
                 "--output-dir build/artifacts\n")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n{examples}\nThen: ./make_triton_image.sh build/artifacts/model.onnx "
               "build/artifacts/tokenizer build/artifacts/id2label.json")
    parser.add_argument("--model", required=True, metavar="SRC",
                        help="the model: a directory (local), user/model_name (hf), a model id or "
                             "TASK_ID:ARTIFACT_NAME (clearml)")
    parser.add_argument("--model-storage", choices=list(storages), default="local",
                        help="where --model lives (default: local)")
    parser.add_argument("--model-revision", metavar="REV", help="Hub branch, tag or commit of --model (hf only)")
    parser.add_argument("--tokenizer", metavar="SRC", help="the tokenizer, if it is not stored with the model")
    parser.add_argument("--tokenizer-storage", choices=list(storages),
                        help="where --tokenizer lives (default: --model-storage)")
    parser.add_argument("--tokenizer-revision", metavar="REV",
                        help="Hub branch, tag or commit of --tokenizer (hf only)")
    parser.add_argument("--id2label", type=Path, metavar="FILE",
                        help='JSON {"0": "name", ...}: label names; must match the model\'s number of labels and '
                             "then wins over config.id2label (default: the model's config)")
    parser.add_argument("--output-dir", type=Path, required=True, metavar="DIR",
                        help="where model.onnx, tokenizer/, id2label.json and conversion_report.json go "
                             "(new, empty, or a previous conversion's output)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default: {DEFAULT_OPSET}; Triton 24.10's ONNX Runtime runs up to 21)")
    parser.add_argument("--fuse", action="store_true",
                        help="fuse attention, GELU and LayerNorm with onnxruntime's transformer optimizer (model_type "
                             "bert); the fused graph must pass the same parity check (faster on CPU, same answers)")
    parser.add_argument("--quantize", action="store_true",
                        help="dynamic int8 quantization (onnxruntime quantize_dynamic), after --fuse if given: "
                             "about 2x faster on CPU; judged against fp32 by the thresholds below, figures in "
                             "conversion_report.json")
    parser.add_argument("--int8-min-agreement", type=_fraction, default=DEFAULT_MIN_AGREEMENT, metavar="F",
                        help="--quantize fails unless the int8 top label equals fp32's on at least this fraction of "
                             f"the probe answers (default: {DEFAULT_MIN_AGREEMENT})")
    parser.add_argument("--int8-max-prob-diff", type=_fraction, default=DEFAULT_MAX_PROB_DIFF, metavar="F",
                        help="--quantize fails if any class probability moves by more than this on a probe text "
                             f"(default: {DEFAULT_MAX_PROB_DIFF})")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {value!r}")
    return number


def sources_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Source, Source | None]:
    model = Source(args.model, args.model_storage, args.model_revision)
    if args.tokenizer is None:
        if args.tokenizer_storage or args.tokenizer_revision:
            parser.error("--tokenizer-storage / --tokenizer-revision need --tokenizer")
        return model, None
    return model, Source(args.tokenizer, args.tokenizer_storage or args.model_storage, args.tokenizer_revision)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:  # one line per HTTP request is noise next to the download progress bars
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    model, tokenizer = sources_from(args, parser)
    try:
        report = convert(model, args.output_dir, tokenizer=tokenizer, id2label_file=args.id2label, opset=args.opset,
                         optimization=OptimizeOptions(args.fuse, args.quantize, args.int8_min_agreement,
                                                      args.int8_max_prob_diff))
    except CONVERSION_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    figures = ParityFigures(**report["parity"])
    print(f"parity: {figures.summary()}")
    pairs = report["pair_parity"]
    print(f"pair parity: {ParityFigures(**{k: v for k, v in pairs.items() if k != 'checked_on'}).summary()}"
          if pairs["passed"] else f"pair parity: FAILED, text pairs can't be served (--text-pair): {pairs['reason']}")
    if report["optimization"].get("fusion"):
        fusion = report["optimization"]["fusion"]
        print(f"fusion: {fusion['attention_layers_fused']}/{fusion['layers']} attention layers fused; parity of the "
              f"fused graph: {ParityFigures(**fusion['parity']).summary()}")
    if report["optimization"].get("quantization"):
        print(f"int8 vs fp32: {AgreementFigures(**report['optimization']['quantization']['agreement']).summary()}")
    print(f"converted {report['architecture']} ({report['num_labels']} label(s), problem_type "
          f"{report['problem_type'] or 'unset'}: the pipeline applies {report['function_to_apply']}; inputs "
          f"{', '.join(report['inputs'])}, max_sequence_length {report['max_sequence_length']}) into {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
