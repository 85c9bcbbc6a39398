"""Until make_triton_image.sh writes tritoned.json (the `facts` branch), the tests write it for the repositories
they assemble, from the same facts (id2label.json, config.pbtxt); a repository that has one is left as it is."""
from __future__ import annotations

import json
import re
from pathlib import Path


def ensure_manifest(repository: Path, id2label: Path, pipeline_function: str) -> None:
    path = repository / "tritoned.json"
    if path.exists():
        return
    labels = json.loads(id2label.read_text(encoding="utf-8"))
    ensemble = (repository / "ensemble_model" / "config.pbtxt").read_text(encoding="utf-8")
    preprocessing = (repository / "text_preprocessing" / "config.pbtxt").read_text(encoding="utf-8")
    pairs = "text_pair" in ensemble
    multi = '"labels"' in ensemble
    length = int(re.search(r'max_sequence_length".*?string_value: "(\d+)"', preprocessing, re.S).group(1))
    batch = int(re.search(r"max_batch_size:\s*(\d+)", ensemble).group(1))
    path.write_text(json.dumps({
        "format": 1, "ensemble": "ensemble_model", "inputs": ["text_input"] + (["text_pair"] if pairs else []),
        "outputs": ["label", "score", "probabilities"] + (["labels"] if multi else []),
        "string_outputs": ["label"] + (["labels"] if multi else []), "max_batch_size": batch,
        "labels": [labels[str(i)] for i in range(len(labels))], "function_to_apply": pipeline_function,
        "pipeline_function": pipeline_function, "label_threshold": 0.5 if multi else None,
        "max_sequence_length": length, "triton_release": None}), encoding="utf-8")
