#!/usr/bin/env python3
"""Write Triton's label file from id2label.json: one class name per line, in class-id order.

Triton's classification extension reads it (config `label_filename`) to answer top-k requests on the
`probabilities` output with "value:index:name" strings. make_triton_image.sh calls this after
utils/validate_artifacts.py has checked the names (no line breaks or control characters).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def label_lines(id2label: dict[str, str]) -> str:
    names = [id2label[str(index)] for index in range(len(id2label))]
    if any("\n" in name or "\r" in name for name in names):
        raise ValueError("a label name holds a line break; check id2label.json with utils/validate_artifacts.py")
    return "".join(f"{name}\n" for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("id2label", type=Path, help='JSON object {"0": "label", ...}, already validated')
    parser.add_argument("output", type=Path, nargs="+", help="label file(s) to write, e.g. MODEL_DIR/labels.txt")
    args = parser.parse_args(argv)
    text = label_lines(json.loads(args.id2label.read_text(encoding="utf-8")))
    for output in args.output:
        output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
