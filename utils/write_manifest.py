#!/usr/bin/env python3
"""Write tritoned.json, the manifest at the root of an assembled model repository.

make_triton_image.sh calls this once the repository is rendered. The manifest is where the run-time side (the
gateway, the health check, serve_local.sh) reads the model's facts from, instead of grepping config.pbtxt or
asking Triton: the ensemble's name, the output functions post_processing applies, its inputs and outputs, max_batch_size, the label names, the functions, the
multi-label threshold, the longest tokenized text, the Triton release the image is built for, and `sizing`: which
sizes the build fixed (the others are "auto": the gateway chooses them at start from the CPUs it may use) and
whether model_onnx may batch requests together. Read it with gateway/manifest.py (which checks what is written here
before it is written).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as `python utils/write_manifest.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.manifest import AUTO, FILE_NAME, FORMAT, SIZE_MINIMUMS, ManifestError, parse  # noqa: E402
from model_repository.tritoned_heads import FUNCTIONS, LabelError, read_id2label  # noqa: E402

Size = int | str  # a number of the build's, or AUTO


def manifest(ensemble: str, labels: list[str], max_batch_size: int, function: str, pipeline_function: str,
             max_sequence_length: int, text_pair: bool = False, label_threshold: float | None = None,
             triton_release: str | None = None, sizes: dict[str, Size] | None = None,
             model_batching: bool = True) -> dict[str, Any]:
    """The manifest's object; `label_threshold` is given for a multi-label model only (it adds the output labels);
    `sizes` maps the names of SIZE_MINIMUMS to a number or AUTO (missing: AUTO)."""
    string_outputs = ["label"] + (["labels"] if label_threshold is not None else [])
    sizing: dict[str, Size | bool] = {name: (sizes or {}).get(name, AUTO) for name in SIZE_MINIMUMS}
    sizing["model_batching"] = model_batching
    return {
        "format": FORMAT,
        "ensemble": ensemble,
        "functions": list(FUNCTIONS),
        "inputs": ["text_input"] + (["text_pair"] if text_pair else []),
        "outputs": ["label", "score", "probabilities"] + string_outputs[1:],
        "string_outputs": string_outputs,
        "max_batch_size": max_batch_size,
        "labels": labels,
        "function_to_apply": function,
        "pipeline_function": pipeline_function,
        "label_threshold": label_threshold,
        "max_sequence_length": max_sequence_length,
        "triton_release": triton_release,
        "sizing": sizing,
    }


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def size_type(name: str) -> Callable[[str], Size]:
    """The argparse type of the size `name`: AUTO or an integer of at least its minimum."""
    minimum = SIZE_MINIMUMS[name]

    def size(text: str) -> Size:
        if text == AUTO:
            return AUTO
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be "{AUTO}" or an integer >= {minimum}, got {text}')
        return value
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", type=Path, help="the assembled model repository; tritoned.json goes to its root")
    parser.add_argument("--ensemble", required=True, help="the ensemble's name (MODEL_NAME)")
    parser.add_argument("--id2label", type=Path, required=True, help='JSON object {"0": "label", ...}')
    parser.add_argument("--max-batch-size", type=positive_int, required=True, help="most texts in one request")
    parser.add_argument("--function", choices=list(FUNCTIONS), required=True,
                        help="what post_processing applies to the logits by default")
    parser.add_argument("--pipeline-function", choices=list(FUNCTIONS), required=True,
                        help="what the Hugging Face pipeline applies to this model by default")
    parser.add_argument("--max-sequence-length", type=positive_int, required=True,
                        help="tokens a text (or pair) is truncated to")
    parser.add_argument("--text-pair", action="store_true", help="the model takes text pairs (input text_pair)")
    parser.add_argument("--label-threshold", type=float, metavar="T",
                        help="multi-label models only: the threshold of the output labels")
    parser.add_argument("--triton-release", default="", metavar="YY.MM",
                        help="the NGC release the image is built for (empty: another base image)")
    for name in SIZE_MINIMUMS:
        parser.add_argument("--" + name.replace("_", "-"), type=size_type(name), default=AUTO, metavar="N|auto",
                            help=f"the build's {name} (default %(default)s: the gateway chooses it at start)")
    parser.add_argument("--no-model-batching", action="store_true",
                        help="model_onnx runs one request at a time (a dynamically quantized model)")
    args = parser.parse_args(argv)
    try:
        labels = read_id2label(args.id2label)
    except (LabelError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sizes = {name: getattr(args, name) for name in SIZE_MINIMUMS}
    content = manifest(args.ensemble, labels, args.max_batch_size, args.function, args.pipeline_function,
                       args.max_sequence_length, args.text_pair, args.label_threshold, args.triton_release or None,
                       sizes, not args.no_model_batching)
    path = args.repository / FILE_NAME
    try:
        parse(content, path)  # what the gateway will read
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
