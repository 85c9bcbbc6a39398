"""Check the three inputs of make_triton_image.sh before anything is built.

Prints shell assignments (KEY=VALUE, one per line) that the build script uses to render the template:
NUM_LABELS, HAS_TOKEN_TYPE_IDS (0/1), MAX_SEQUENCE_LENGTH, QUANTIZED (0/1: dynamic int8 from --quantize),
FUNCTION_TO_APPLY (softmax/sigmoid/none: what the HF pipeline applies to this model's logits), PROBLEM_TYPE
(config.problem_type, "unset" when none). On any problem it prints one message that names the argument and the
fix, and exits with status 2. With --text-pair the model must also have passed the parity check on text pairs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python utils/validate_artifacts.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model_repository.tritoned_heads import FUNCTIONS, LabelError, read_id2label  # noqa: E402

REQUIRED_INPUTS = ("input_ids", "attention_mask")
OPTIONAL_INPUTS = ("token_type_ids",)
OUTPUT_NAME = "logits"
INT64 = 7  # onnx.TensorProto.INT64
REPORT_NAME = "conversion_report.json"
CONVERT_HINT = "export it with utils/convert_to_onnx.py"
CONVERT_COMMAND = ".venv/bin/python utils/convert_to_onnx.py --model CHECKPOINT_DIR --output-dir build/artifacts"
CONVERTED_INPUTS = "build/artifacts/model.onnx build/artifacts/tokenizer build/artifacts/id2label.json"
SLOW_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "spm.model",
                        "tokenizer.model", "tokenizer_config.json")
SANE_MAX_LENGTH = 1_000_000  # transformers writes VERY_LARGE_INTEGER when a tokenizer has no limit


class ArtifactError(Exception):
    """A problem with one of the inputs; the message names the argument and the fix."""


def id2label_path_error(path: Path) -> ArtifactError:
    """ID2LABEL is not a file: say what it is and which file to pass."""
    if path.is_dir():
        inside = path / "id2label.json"
        hint = (f"pass the file in it: {inside}" if inside.is_file() else
                f"pass the id2label.json file that utils/convert_to_onnx.py writes ({CONVERT_COMMAND})")
        return ArtifactError(f"id2label: {path} is a directory, not a JSON file; {hint}")
    return ArtifactError(f"id2label: no such file: {path}; pass the id2label.json file that "
                         f"utils/convert_to_onnx.py writes ({CONVERT_COMMAND})")


def load_id2label(path: Path) -> list[str]:
    """The label names of ID2LABEL in id order (the rules: model_repository/tritoned_heads.py)."""
    if not path.is_file():
        raise id2label_path_error(path)
    try:
        return read_id2label(path)
    except LabelError as err:
        raise ArtifactError(str(err)) from err


def tokenizer_path_error(path: Path) -> ArtifactError:
    """TOKENIZER is neither tokenizer.json nor a directory holding it: say what it is and what to pass."""
    fix = "pass the directory holding tokenizer.json (utils/convert_to_onnx.py writes one: its tokenizer/)"
    if not path.exists():
        return ArtifactError(f"tokenizer: no such {'file' if path.name == 'tokenizer.json' else 'directory'}: "
                             f"{path}; {fix}")
    if path.is_file():
        if (path.parent / "tokenizer.json").is_file():
            fix = f"pass the directory that holds it and tokenizer.json: {path.parent}"
        return ArtifactError(f"tokenizer: {path} is a file, not tokenizer.json or a directory holding it; {fix}")
    if (path / "tokenizer" / "tokenizer.json").is_file():
        fix = f"pass its tokenizer/ directory: {path / 'tokenizer'}"
    elif any((path / name).is_file() for name in SLOW_TOKENIZER_FILES):
        fix = (f"it holds a slow tokenizer only; utils/convert_to_onnx.py converts it to a fast one and writes "
               f"tokenizer/ with tokenizer.json ({CONVERT_COMMAND})")
    else:
        fix = ("pass the directory written by tokenizer.save_pretrained() for a fast tokenizer "
               "(utils/convert_to_onnx.py writes one)")
    return ArtifactError(f"tokenizer: {path} holds no tokenizer.json; {fix}")


def tokenizer_dir(path: Path) -> Path:
    directory = path.parent if path.name == "tokenizer.json" else path
    if not (directory / "tokenizer.json").is_file():
        raise tokenizer_path_error(path)
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as err:  # tokenizers raises plain Exception subclasses
        raise ArtifactError(f"tokenizer: {directory / 'tokenizer.json'} cannot be loaded ({err})") from err
    return directory


def tokenizer_max_length(directory: Path) -> int | None:
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text(encoding="utf-8")).get("model_max_length")
    return int(value) if isinstance(value, (int, float)) and 0 < value < SANE_MAX_LENGTH else None


def is_dynamic(dim: Any) -> bool:
    return not dim.HasField("dim_value") or dim.dim_value <= 0


def model_path_error(path: Path) -> ArtifactError:
    """MODEL is not a file: say what it is, and that MODEL is the converter's model.onnx (with the command)."""
    what = "MODEL is the model.onnx file that utils/convert_to_onnx.py writes"
    if not path.is_dir():
        return ArtifactError(f"model: no such file: {path}; {what} ({CONVERT_COMMAND})")
    if (path / "model.onnx").is_file():
        return ArtifactError(f"model: {path} is a directory; {what}: pass {path / 'model.onnx'}")
    if (path / "config.json").is_file():
        command = CONVERT_COMMAND.replace("CHECKPOINT_DIR", shlex.quote(str(path)))
        return ArtifactError(f"model: {path} is a directory (a Hugging Face checkpoint: it holds config.json), not "
                             f"a model.onnx; {what}. Convert it first: {command}, then pass {CONVERTED_INPUTS}")
    return ArtifactError(f"model: {path} is a directory, not a file; {what}. Convert the checkpoint first: "
                         f"{CONVERT_COMMAND}, then pass {CONVERTED_INPUTS}")


def load_onnx(path: Path) -> Any:
    if not path.is_file():
        raise model_path_error(path)
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise ArtifactError(f"model: {path} is not an ONNX model ({err}); {CONVERT_HINT}") from err


def check_inputs(model: Any, path: Path) -> bool:
    """Returns whether the model takes token_type_ids."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    allowed = REQUIRED_INPUTS + OPTIONAL_INPUTS
    missing = [name for name in REQUIRED_INPUTS if name not in inputs]
    extra = [name for name in inputs if name not in allowed]
    if missing or extra:
        raise ArtifactError(f"model: {path} has inputs {sorted(inputs)}; the template needs "
                            f"{list(REQUIRED_INPUTS)} (+ optional {list(OPTIONAL_INPUTS)}); {CONVERT_HINT}")
    for name, value in inputs.items():
        tensor = value.type.tensor_type
        dims = list(tensor.shape.dim)
        if tensor.elem_type != INT64:
            raise ArtifactError(f"model: input {name} must be int64; {CONVERT_HINT}")
        if len(dims) != 2 or not all(is_dynamic(dim) for dim in dims):
            raise ArtifactError(f"model: input {name} must have dynamic [batch, sequence] axes; "
                                f"export with dynamic_axes or {CONVERT_HINT}")
    return "token_type_ids" in inputs


def check_output(model: Any, path: Path, num_labels: int) -> None:
    outputs = {o.name: o for o in model.graph.output}
    if OUTPUT_NAME not in outputs:
        raise ArtifactError(f"model: {path} has outputs {sorted(outputs)}, needs '{OUTPUT_NAME}'; {CONVERT_HINT}")
    dims = list(outputs[OUTPUT_NAME].type.tensor_type.shape.dim)
    if len(dims) != 2 or is_dynamic(dims[1]):
        raise ArtifactError(f"model: output logits must be [batch, num_labels] with a fixed num_labels; {CONVERT_HINT}")
    if dims[1].dim_value != num_labels:
        raise ArtifactError(f"model: logits have {dims[1].dim_value} classes but id2label names {num_labels}; "
                            "pass the id2label.json written for this model")


def position_embeddings(model: Any) -> int | None:
    sizes = [init.dims[0] for init in model.graph.initializer
             if "position_embeddings" in init.name and len(init.dims) == 2]
    return min(sizes) if sizes else None


def served_function(report: dict[str, Any], report_path: Path, num_labels: int) -> str:
    """The pipeline's function recorded by the converter. Reports written before it was recorded only served
    softmax, which is right for a single-label model with several labels; any other model must be converted anew."""
    function = report.get("function_to_apply")
    if function in FUNCTIONS:
        return str(function)
    if function is None and num_labels > 1 and report.get("problem_type") == "single_label_classification":
        return "softmax"
    raise ArtifactError(f"model: {report_path} does not record function_to_apply (softmax, sigmoid or none: what the "
                        "HF pipeline applies to this model's logits); convert the model again with "
                        "utils/convert_to_onnx.py")


def check_pair_parity(report: dict[str, Any], report_path: Path) -> None:
    pairs = report.get("pair_parity")
    if not isinstance(pairs, dict):
        raise ArtifactError(f"model: --text-pair needs a parity check on text pairs, which {report_path} does not "
                            "record; convert the model again with utils/convert_to_onnx.py (it checks pairs)")
    if not pairs.get("passed"):
        raise ArtifactError(f"model: --text-pair: {report_path} records a failed parity check on text pairs, so "
                            f"pairs would not be answered as the HF tokenizer and model do: "
                            f"{pairs.get('reason', 'no reason recorded')}")


def load_report(path: Path) -> dict[str, Any]:
    """The converter's report: parity with PyTorch must have been checked for exactly this file."""
    report_path = path.parent / REPORT_NAME
    fix = f"convert the model with utils/convert_to_onnx.py, which checks parity with PyTorch and writes {REPORT_NAME}"
    if not report_path.is_file():
        raise ArtifactError(f"model: no {REPORT_NAME} beside {path}: its parity with PyTorch was never checked; {fix}")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if not report.get("parity", {}).get("passed"):
        raise ArtifactError(f"model: {report_path} does not record a passed parity check; {fix}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if report.get("model_sha256") != digest:
        raise ArtifactError(f"model: {path} is not the file whose parity {report_path} records (sha256 differs); {fix}")
    return report


def validate(model_path: Path, tokenizer_path: Path, id2label_path: Path,
             text_pair: bool = False) -> dict[str, int | str]:
    if not model_path.is_file():  # first: a checkpoint directory as MODEL means "convert first", whatever follows
        raise model_path_error(model_path)
    id2label = load_id2label(id2label_path)
    directory = tokenizer_dir(tokenizer_path)
    model = load_onnx(model_path)
    has_token_type_ids = check_inputs(model, model_path)
    check_output(model, model_path, len(id2label))
    report = load_report(model_path)
    report_path = model_path.parent / REPORT_NAME
    function = served_function(report, report_path, len(id2label))
    if text_pair:
        check_pair_parity(report, report_path)
    limits = [value for value in (report.get("max_sequence_length"), tokenizer_max_length(directory),
                                  position_embeddings(model)) if isinstance(value, int) and value > 0]
    return {
        "NUM_LABELS": len(id2label),
        "HAS_TOKEN_TYPE_IDS": int(has_token_type_ids),
        "MAX_SEQUENCE_LENGTH": min(limits) if limits else 512,
        "QUANTIZED": int(bool(report.get("optimization", {}).get("quantized"))),
        "FUNCTION_TO_APPLY": function,
        "PROBLEM_TYPE": str(report.get("problem_type") or "unset"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="model.onnx written by utils/convert_to_onnx.py")
    parser.add_argument("tokenizer", type=Path, help="directory holding tokenizer.json")
    parser.add_argument("id2label", type=Path, help='JSON object {"0": "label", ...}')
    parser.add_argument("--text-pair", action="store_true",
                        help="the model will be served on text pairs: its parity on pairs must have passed")
    args = parser.parse_args(argv)
    try:
        values = validate(args.model, args.tokenizer, args.id2label, args.text_pair)
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for key, value in values.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
