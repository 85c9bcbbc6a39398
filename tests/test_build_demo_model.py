"""utils/build_demo_model.py and its data file utils/demo_intents.json.

The full fine-tuning runs in quickstart.sh; here the real script trains for two optimizer steps, which is
enough to check what it writes and that a second run with the same inputs does no work.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import ROOT

SCRIPT = ROOT / "utils" / "build_demo_model.py"
DATA = ROOT / "utils" / "demo_intents.json"
QUICK = ["--epochs", "1", "--max-steps", "2", "--seed", "3"]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_demo_model", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


def build(output_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--output-dir", str(output_dir), *args],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def intents() -> dict:
    return json.loads(DATA.read_text(encoding="utf-8"))["intents"]


def normalized(text: str) -> str:
    return " ".join(text.lower().replace("ё", "е").strip(" ?!.,").split())


# ------------------------------------------------------------------------------------------ data file


def test_every_intent_has_russian_and_english_examples() -> None:
    data = intents()
    assert len(data) >= 5
    for name, intent in data.items():
        for split, minimum in (("train", 10), ("heldout", 3)):
            for language in ("ru", "en"):
                texts = intent[split][language]
                assert len(texts) >= minimum, f"{name}: {split}/{language} has {len(texts)} texts"
                assert all(isinstance(text, str) and text.strip() for text in texts), (name, split, language)


def test_no_text_appears_twice_in_the_data_file() -> None:
    seen: dict[str, str] = {}
    for name, intent in intents().items():
        for split in ("train", "heldout"):
            for language, texts in intent[split].items():
                for text in texts:
                    key = normalized(text)
                    where = f"{name}/{split}/{language}"
                    assert key not in seen, f"{text!r} is in {seen[key]} and in {where}"
                    seen[key] = where


def test_demo_probe_is_a_help_request_in_training() -> None:
    """The README's curl sends "помогите мне"; the demo must have been taught what it means."""
    assert "помогите мне" in intents()["help_request"]["train"]["ru"]


# ------------------------------------------------------------------------------------------ the script


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output_dir = tmp_path_factory.mktemp("demo") / "model"
    result = build(output_dir, *QUICK)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "held-out accuracy [ru]" in result.stderr and "held-out accuracy [en]" in result.stderr
    return output_dir


def test_output_loads_with_the_intents_as_labels(built: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(built)
    names = list(intents())
    assert model.config.id2label == dict(enumerate(names))
    assert model.config.label2id == {name: index for index, name in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(built)
    assert 0 < tokenizer.model_max_length <= model.config.max_position_embeddings
    logits = model(**tokenizer(["помогите мне", "where is my order?"], padding=True, return_tensors="pt")).logits
    assert tuple(logits.shape) == (2, len(names))


def test_saved_tokenizer_has_no_fixed_padding_or_truncation(built: Path) -> None:
    tokenizer_json = json.loads((built / "tokenizer.json").read_text(encoding="utf-8"))
    assert tokenizer_json["padding"] is None
    assert tokenizer_json["truncation"] is None


def test_second_run_with_same_inputs_skips_training(built: Path) -> None:
    watched = [built / "model.safetensors", built / "demo_build_stamp.json"]
    before = [path.stat().st_mtime_ns for path in watched]
    result = build(built, *QUICK)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "up to date" in result.stderr
    assert "epoch" not in result.stderr
    assert [path.stat().st_mtime_ns for path in watched] == before
    assert not [p.name for p in built.parent.iterdir() if p.name.startswith(".")], "temporary dirs left"


def test_build_key_changes_with_seed_and_data(tmp_path: Path) -> None:
    module = load_script()
    base = module.base_model_path()
    settings = module.settings_from(module.parse_args(["--output-dir", "x", *QUICK]))
    reseeded = module.settings_from(module.parse_args(["--output-dir", "x", "--epochs", "1", "--max-steps", "2",
                                                       "--seed", "4"]))
    key = module.build_key(DATA, base, settings)
    assert key == module.build_key(DATA, base, settings)
    assert key != module.build_key(DATA, base, reseeded)
    edited = tmp_path / "intents.json"
    edited.write_text(DATA.read_text(encoding="utf-8").replace("помогите мне", "помогите мне!"), encoding="utf-8")
    assert key != module.build_key(edited, base, settings)


def test_refuses_to_replace_a_directory_it_did_not_write(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    result = build(foreign, *QUICK)
    assert result.returncode == 2
    assert "--output-dir" in result.stderr and "--force" in result.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
