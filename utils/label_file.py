#!/usr/bin/env python3
"""Write Triton's label file from id2label.json: one class name per line, in class-id order.

Triton's classification extension reads it (config `label_filename`) to answer top-k requests on the
`probabilities` output with "value:index:name" strings. make_triton_image.sh calls this after
utils/validate_artifacts.py has checked the names (no line breaks or control characters).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python utils/label_file.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model_repository.tritoned_heads import LabelError, read_id2label  # noqa: E402


def label_lines(names: list[str]) -> str:
    """The label file of `names` (checked by tritoned_heads: none holds a line break)."""
    return "".join(f"{name}\n" for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("id2label", type=Path, help='JSON object {"0": "label", ...}')
    parser.add_argument("output", type=Path, nargs="+", help="label file(s) to write, e.g. MODEL_DIR/labels.txt")
    args = parser.parse_args(argv)
    try:
        text = label_lines(read_id2label(args.id2label))
    except (LabelError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for output in args.output:
        output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
