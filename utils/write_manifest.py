#!/usr/bin/env python3
"""Write tritoned.json, the manifest at the root of an assembled model repository.

make_triton_image.sh calls this once the repository is rendered. The manifest is where the run-time side (the
gateway, the health check, serve_local.sh) reads the model's facts from, instead of grepping config.pbtxt or
asking Triton: the ensemble's name, its inputs and outputs, max_batch_size, the label names, the functions, the
multi-label threshold, the longest tokenized text and the Triton release the image is built for. Read it with
gateway/manifest.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python utils/write_manifest.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model_repository.tritoned_heads import FUNCTIONS, LabelError, read_id2label  # noqa: E402

MANIFEST_FILE = "tritoned.json"
FORMAT = 1


def manifest(ensemble: str, labels: list[str], max_batch_size: int, function: str, pipeline_function: str,
             max_sequence_length: int, text_pair: bool = False, label_threshold: float | None = None,
             triton_release: str | None = None) -> dict[str, Any]:
    """The manifest's object; `label_threshold` is given for a multi-label model only (it adds the output labels)."""
    string_outputs = ["label"] + (["labels"] if label_threshold is not None else [])
    return {
        "format": FORMAT,
        "ensemble": ensemble,
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
    }


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


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
    args = parser.parse_args(argv)
    try:
        labels = read_id2label(args.id2label)
    except (LabelError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    content = manifest(args.ensemble, labels, args.max_batch_size, args.function, args.pipeline_function,
                       args.max_sequence_length, args.text_pair, args.label_threshold, args.triton_release or None)
    (args.repository / MANIFEST_FILE).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
