"""Model sizes for the benchmark: BERT classifiers of the shapes users deploy, with random (seeded) weights.

Speed depends on the shape, not on the weights, so each size is a `BertForSequenceClassification` of that shape,
randomly initialised with a fixed seed, with the demo's tokenizer (all-MiniLM-L6-v2's WordPiece, the server
truncating at 256 tokens) and the demo's labels. It is saved as a user's Trainer leaves a model
(save_pretrained) and converted with utils/convert_to_onnx.py, whose parity check (PyTorch vs ONNX Runtime) has
to pass as for any model. Both are cached under build/bench/sizes/SIZE/{hf,onnx} and rebuilt only when the shape
or the converter changes.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGGER = logging.getLogger(__name__)
SEED = 20
LABELS = ("account", "help", "order", "payment", "refund")


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    intermediate: int


SIZES = {
    "tiny": Shape(hidden=312, layers=3, heads=12, intermediate=600),  # cointegrated/rubert-tiny2
    "mini": Shape(hidden=384, layers=6, heads=12, intermediate=1536),  # all-MiniLM-L6-v2 (the demo model)
    "base": Shape(hidden=768, layers=12, heads=12, intermediate=3072),  # bert-base, rubert-base-cased
}
DESCRIPTIONS = {"tiny": "rubert-tiny2 shape: hidden 312, 3 layers", "mini": "MiniLM-L6 shape: hidden 384, 6 layers",
                "base": "BERT-base shape: hidden 768, 12 layers"}


class ShapeError(RuntimeError):
    """A size could not be built or converted; the message says why."""


def stamp_of(size: str) -> dict[str, object]:
    converter = ROOT / "utils" / "convert_to_onnx.py"
    return {"size": size, **asdict(SIZES[size]), "seed": SEED, "labels": list(LABELS),
            "converter_mtime": converter.stat().st_mtime}


def build_hf(size: str, out_dir: Path) -> None:
    """save_pretrained of a seeded random BertForSequenceClassification of SIZES[size] and the demo tokenizer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from utils.build_demo_model import base_model_path, load_tokenizer

    shape = SIZES[size]
    tokenizer = load_tokenizer(base_model_path())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                        num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                        max_position_embeddings=512, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)})
    torch.manual_seed(SEED)
    model = BertForSequenceClassification(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def ensure_size(size: str, work_dir: Path, python: str = sys.executable) -> tuple[Path, Path]:
    """(hf_dir, onnx_dir) of `size` under work_dir/sizes/SIZE, built and converted when missing or stale."""
    if size not in SIZES:
        raise ShapeError(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    base = work_dir / "sizes" / size
    hf_dir, onnx_dir, stamp_file = base / "hf", base / "onnx", base / "stamp.json"
    stamp = stamp_of(size)
    if stamp_file.is_file() and json.loads(stamp_file.read_text(encoding="utf-8")) == stamp and \
            (onnx_dir / "conversion_report.json").is_file():
        return hf_dir, onnx_dir
    LOGGER.info("building the %s model (%s, random weights) in %s", size, DESCRIPTIONS[size], base)
    stamp_file.unlink(missing_ok=True)
    result = subprocess.run([python, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                             f"from bench.shapes import build_hf; build_hf({size!r}, __import__('pathlib').Path("
                             f"{str(hf_dir)!r}))"], capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise ShapeError(f"building the {size} model failed:\n{result.stderr[-3000:]}")
    command = [python, "utils/convert_to_onnx.py", "--model", str(hf_dir), "--model-storage", "local",
               "--output-dir", str(onnx_dir)]
    LOGGER.info("converting the %s model: %s", size, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise ShapeError(f"converting the {size} model failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    stamp_file.write_text(json.dumps(stamp), encoding="utf-8")
    return hf_dir, onnx_dir
