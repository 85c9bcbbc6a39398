"""utils/convert_to_onnx.py on local models: tiny models of every supported tokenizer kind convert, the ONNX
model and tokenizer.json answer like PyTorch (checked here independently of the converter's own parity
check), and every error path gives one clear message and leaves the output directory untouched."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import ROOT
from reference import pytorch_probabilities
from tiny_models import BUILDERS

sys.path.insert(0, str(ROOT))
from utils.convert_to_onnx import ARTIFACTS, Source, convert, main  # noqa: E402

# The contract: token_type_ids only where the tokenizer produces them AND the model embeds them.
TAKES_TOKEN_TYPE_IDS = {"bert": True, "electra": True, "distilbert": False, "roberta": False,
                        "xlm_roberta": False, "albert": False, "deberta_v2": False}
ROBERTA_FAMILY = {"roberta", "xlm-roberta"}  # position ids start at pad_token_id + 1
TEXTS = ["помогите мне", "where is my order", "спасибо 🙂", "", "help " * 100, "I want a refund for this item"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """hf_model("roberta") -> a tiny Hugging Face model directory, built once per module."""
    cache: dict[str, Path] = {}

    def build(kind: str) -> Path:
        if kind not in cache:
            cache[kind] = BUILDERS[kind](tmp_path_factory.mktemp(kind) / "hf")
        return cache[kind]

    return build


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def onnx_graph(path: Path):
    import onnx

    return onnx.load(str(path))


def expected_max_length(hf_dir: Path) -> int:
    config = read_json(hf_dir / "config.json")
    offset = config["pad_token_id"] + 1 if config["model_type"] in ROBERTA_FAMILY else 0
    limits = [config["max_position_embeddings"] - offset]
    tokenizer_limit = read_json(hf_dir / "tokenizer_config.json").get("model_max_length")
    if isinstance(tokenizer_limit, int) and tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)
    return min(limits)


def served_probabilities(out_dir: Path, texts: list[str], input_names: list[str]) -> np.ndarray:
    """What Triton computes: tokenizer.json truncated to max_sequence_length, one right-padded batch, ONNX Runtime."""
    import onnxruntime
    from tokenizers import Tokenizer

    report = read_json(out_dir / "conversion_report.json")
    tokenizer = Tokenizer.from_file(str(out_dir / "tokenizer" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=report["max_sequence_length"])
    encodings = tokenizer.encode_batch(texts)
    length = max(len(e.ids) for e in encodings)
    pad_id = report["tokenizer"]["pad_id"]
    arrays = {"input_ids": np.full((len(texts), length), pad_id, dtype=np.int64),
              "attention_mask": np.zeros((len(texts), length), dtype=np.int64),
              "token_type_ids": np.zeros((len(texts), length), dtype=np.int64)}
    for row, encoding in enumerate(encodings):
        arrays["input_ids"][row, :len(encoding.ids)] = encoding.ids
        arrays["attention_mask"][row, :len(encoding.ids)] = encoding.attention_mask
        arrays["token_type_ids"][row, :len(encoding.ids)] = encoding.type_ids
    session = onnxruntime.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {name: arrays[name] for name in input_names})[0]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def run_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def the_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def assert_nothing_written(out_dir: Path) -> None:
    assert not out_dir.exists(), f"{out_dir} was created"
    if out_dir.parent.exists():
        leftovers = [p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]
        assert not leftovers, f"temporary files left beside {out_dir}: {leftovers}"


# ------------------------------------------------------------------------------------------ conversions

@pytest.mark.parametrize("kind", sorted(TAKES_TOKEN_TYPE_IDS))
def test_converts_and_answers_like_pytorch(kind: str, hf_model, tmp_path: Path) -> None:
    hf_dir = hf_model(kind)
    out = tmp_path / "converted"
    report = convert(Source(str(hf_dir)), out)

    assert sorted(p.name for p in out.iterdir()) == sorted(ARTIFACTS)
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (out / "tokenizer").iterdir()}

    config = read_json(hf_dir / "config.json")
    graph = onnx_graph(out / "model.onnx")
    inputs = [i.name for i in graph.graph.input]
    assert ("token_type_ids" in inputs) is TAKES_TOKEN_TYPE_IDS[kind]
    assert inputs[:2] == ["input_ids", "attention_mask"] and inputs == report["inputs"]
    for value in graph.graph.input:
        assert value.type.tensor_type.elem_type == 7  # int64
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch", "sequence"]
    [output] = graph.graph.output
    assert output.name == "logits"
    dims = output.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == len(config["id2label"])
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17] == [report["opset"]]

    assert read_json(out / "id2label.json") == {str(k): v for k, v in config["id2label"].items()}
    saved = read_json(out / "conversion_report.json")
    assert saved == json.loads(json.dumps(report))
    assert saved["architecture"] == config["architectures"][0]
    assert saved["max_sequence_length"] == expected_max_length(hf_dir)
    assert read_json(out / "tokenizer" / "tokenizer_config.json")["model_max_length"] == saved["max_sequence_length"]
    assert saved["problem_type"] == config.get("problem_type") and saved["function_to_apply"] == "softmax"
    pairs = saved["pair_parity"]  # every tokenizer kind here has a pair template: proven on pairs too
    assert pairs["passed"] and pairs["probes"] == "text pairs" and pairs["max_abs_logit_diff"] <= TOLERANCE, pairs
    assert saved["model_sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    parity = saved["parity"]
    assert parity["passed"] and parity["max_abs_logit_diff"] <= TOLERANCE and parity["argmax_mismatches"] == 0
    assert parity["longest_sequence"] == saved["max_sequence_length"]  # a probe was truncated

    expected = pytorch_probabilities(hf_dir, TEXTS, saved["max_sequence_length"])
    served = served_probabilities(out, TEXTS, inputs)
    np.testing.assert_allclose(served, expected, atol=TOLERANCE)
    assert (served.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_slow_sentencepiece_tokenizer_is_converted_to_tokenizer_json(hf_model, tmp_path: Path) -> None:
    """Only spiece.model (no tokenizer.json), as older repos ship it: tokenizer.json is built and agrees."""
    hf_dir = hf_model("albert_slow")
    assert not (hf_dir / "tokenizer.json").exists()
    out = tmp_path / "converted"
    report = convert(Source(str(hf_dir)), out)
    assert report["tokenizer"]["converted_to_fast"] is True
    assert report["parity"]["tokenizer_mismatches"] == 0
    np.testing.assert_allclose(served_probabilities(out, TEXTS, report["inputs"]),
                               pytorch_probabilities(hf_dir, TEXTS, report["max_sequence_length"]), atol=TOLERANCE)


def test_cli_prints_parity_uses_the_id2label_file_and_records_multi_label(hf_model, tmp_path: Path) -> None:
    hf_dir = tmp_path / "multi"
    shutil.copytree(hf_model("distilbert"), hf_dir)
    config = read_json(hf_dir / "config.json")
    config["problem_type"] = "multi_label_classification"
    (hf_dir / "config.json").write_text(json.dumps(config))
    names = {str(i): f"topic-{i}" for i in range(len(config["id2label"]))}
    (tmp_path / "labels.json").write_text(json.dumps(names))
    out = tmp_path / "out"

    result = subprocess.run([sys.executable, "utils/convert_to_onnx.py", "--model", str(hf_dir), "--model-storage",
                             "local", "--id2label", str(tmp_path / "labels.json"), "--output-dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "parity:" in result.stdout and "max |logit diff|" in result.stdout
    assert "Exporting" in result.stderr and "wins over config.id2label" in result.stderr  # progress, which wins
    assert read_json(out / "id2label.json") == names
    report = read_json(out / "conversion_report.json")
    assert report["problem_type"] == "multi_label_classification" and report["function_to_apply"] == "sigmoid"
    assert "the pipeline applies sigmoid" in result.stdout and "pair parity:" in result.stdout
    assert report["id2label_source"] == f"file:{tmp_path / 'labels.json'}"
    assert report["inputs"] == ["input_ids", "attention_mask"]


def test_help_shows_an_example_per_storage() -> None:
    result = subprocess.run([sys.executable, "utils/convert_to_onnx.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for storage in ("local", "hf", "clearml"):
        assert f"--model-storage {storage}" in result.stdout


def test_a_previous_output_is_replaced_and_the_opset_is_honoured(hf_model, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert(Source(str(hf_model("bert"))), out)
    report = convert(Source(str(hf_model("bert"))), out, opset=14)
    assert report["opset"] == 14
    assert [o.version for o in onnx_graph(out / "model.onnx").opset_import if o.domain in ("", "ai.onnx")] == [14]
    assert sorted(p.name for p in out.iterdir()) == sorted(ARTIFACTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or previous output left beside it


# ------------------------------------------------------------------------------------------ error paths

def test_missing_directory(capsys, tmp_path: Path) -> None:
    code, stderr = run_main(capsys, "--model", tmp_path / "nope", "--output-dir", tmp_path / "out")
    assert code != 0
    assert "no such directory" in the_error(stderr) and str(tmp_path / "nope") in the_error(stderr)
    assert_nothing_written(tmp_path / "out")


def convert_script(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The real `python utils/convert_to_onnx.py ARGS`, run from `cwd` (relative paths are taken from there)."""
    return subprocess.run([sys.executable, str(ROOT / "utils" / "convert_to_onnx.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("flag", ["model", "tokenizer"])
def test_hub_id_with_the_default_local_storage_suggests_hf(hf_model, tmp_path: Path, flag: str) -> None:
    args = ["--model", "cointegrated/rubert-tiny2"] if flag == "model" else \
        ["--model", hf_model("bert"), "--tokenizer", "cointegrated/rubert-tiny2"]
    result = convert_script(tmp_path, *args, "--output-dir", tmp_path / "out")
    assert result.returncode != 0
    message = the_error(result.stderr)
    assert f"{flag}: no such directory: cointegrated/rubert-tiny2" in message, message
    assert "looks like a Hugging Face Hub repo id" in message and f"add --{flag}-storage hf" in message, message
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("source", ["./results/checkpoint-500", "/nonexistent/model", "a/b/c", "model-dir"])
def test_a_missing_path_that_is_no_hub_id_gets_no_hub_hint(tmp_path: Path, source: str) -> None:
    result = convert_script(tmp_path, "--model", source, "--output-dir", tmp_path / "out")
    assert result.returncode != 0
    message = the_error(result.stderr)
    assert "no such directory" in message and "--model-storage hf" not in message, message


def test_a_local_directory_named_like_a_hub_id_is_used(hf_model, tmp_path: Path) -> None:
    shutil.copytree(hf_model("bert"), tmp_path / "user" / "name")
    result = convert_script(tmp_path, "--model", "user/name", "--output-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_json(tmp_path / "out" / "conversion_report.json")["source"]["model"]["storage"] == "local"


def test_directory_without_a_model_points_at_checkpoints(capsys, hf_model, tmp_path: Path) -> None:
    trainer_out = tmp_path / "results"
    shutil.copytree(hf_model("bert"), trainer_out / "checkpoint-500")
    code, stderr = run_main(capsys, "--model", trainer_out, "--output-dir", tmp_path / "out")
    assert code != 0
    message = the_error(stderr)
    assert "holds no model" in message and "checkpoint-500" in message
    assert_nothing_written(tmp_path / "out")


def test_config_without_weights(capsys, hf_model, tmp_path: Path) -> None:
    model_dir = tmp_path / "no-weights"
    model_dir.mkdir()
    shutil.copy(hf_model("bert") / "config.json", model_dir)
    code, stderr = run_main(capsys, "--model", model_dir, "--tokenizer", hf_model("bert"),
                            "--output-dir", tmp_path / "out")
    assert code != 0 and "no weights" in the_error(stderr)
    assert_nothing_written(tmp_path / "out")


def test_tokenizer_directory_without_a_tokenizer(capsys, hf_model, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, stderr = run_main(capsys, "--model", hf_model("bert"), "--tokenizer", empty, "--output-dir", tmp_path / "out")
    assert code != 0 and "holds no tokenizer" in the_error(stderr)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("labels, phrase", [
    ({"0": "a", "1": "b", "2": "c"}, "names 3 labels but the model outputs 4 logits"),
    ({"0": "a", "1": "b", "2": "c", "3": "d", "4": "e"}, "names 5 labels but the model outputs 4 logits"),
    ({"0": "a", "2": "b", "3": "c", "4": "d"}, "with no gaps"),
    ({"0": "a", "1": "b", "2": "two\nlines", "3": "d"}, "label name of key \"2\" ('two\\nlines') contains '\\n'"),
])
def test_id2label_that_disagrees_with_the_model(capsys, hf_model, tmp_path: Path, labels: dict, phrase: str) -> None:
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    code, stderr = run_main(capsys, "--model", hf_model("bert"), "--id2label", tmp_path / "labels.json",
                            "--output-dir", tmp_path / "out")
    assert code != 0
    assert phrase in the_error(stderr)
    assert_nothing_written(tmp_path / "out")


def test_label_name_of_the_config_that_breaks_the_label_file(capsys, hf_model, tmp_path: Path) -> None:
    hf_dir = tmp_path / "model"
    shutil.copytree(hf_model("distilbert"), hf_dir)
    config = read_json(hf_dir / "config.json")
    config["id2label"]["1"] = "order\rstatus"
    (hf_dir / "config.json").write_text(json.dumps(config))
    code, stderr = run_main(capsys, "--model", hf_dir, "--output-dir", tmp_path / "out")
    assert code != 0
    assert "config.id2label: the label name of key \"1\"" in the_error(stderr) and "--id2label" in the_error(stderr)
    assert_nothing_written(tmp_path / "out")


def test_pair_template_the_server_cannot_fill_is_recorded_not_fatal(hf_model, tmp_path: Path) -> None:
    """A pair template that puts the second text first: transformers and tokenizers follow it, Triton's
    text_preprocessing fills only [specials] A [specials] B [specials]. Single texts convert; the report records
    why pairs can't be served (make_triton_image.sh --text-pair then refuses: test_make_triton_image.py)."""
    hf_dir = tmp_path / "model"
    shutil.copytree(hf_model("bert"), hf_dir)
    tokenizer = read_json(hf_dir / "tokenizer.json")
    tokenizer["post_processor"]["pair"] = [piece for name in ("[CLS]", "B", "[SEP]", "A", "[SEP]") for piece in (
        [{"SpecialToken": {"id": name, "type_id": 0}}] if name.startswith("[") else
        [{"Sequence": {"id": name, "type_id": 0}}])]
    (hf_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    report = convert(Source(str(hf_dir)), tmp_path / "out")
    assert report["parity"]["passed"]
    assert not report["pair_parity"]["passed"] and "not one fixed template" in report["pair_parity"]["reason"]


def test_architecture_that_is_not_a_text_classifier(capsys, tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    model_dir = tmp_path / "vit"
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=8, patch_size=4, num_labels=2)
    ViTForImageClassification(config).save_pretrained(model_dir)
    code, stderr = run_main(capsys, "--model", model_dir, "--output-dir", tmp_path / "out")
    assert code != 0
    message = the_error(stderr)
    assert "ViTForImageClassification" in message and "cannot be exported" in message
    assert_nothing_written(tmp_path / "out")


def test_checkpoint_without_a_trained_classification_head(capsys, hf_model, tmp_path: Path) -> None:
    from transformers import AutoConfig, BertModel

    bare = tmp_path / "bare-encoder"
    BertModel(AutoConfig.from_pretrained(hf_model("bert"))).save_pretrained(bare)
    code, stderr = run_main(capsys, "--model", bare, "--tokenizer", hf_model("bert"), "--output-dir", tmp_path / "out")
    assert code != 0
    message = the_error(stderr)
    assert "no trained weights for classifier" in message and "fine-tune" in message
    assert_nothing_written(tmp_path / "out")


def test_tokenizer_without_a_fast_version(capsys, hf_model, tmp_path: Path) -> None:
    from transformers import ByT5Tokenizer

    ByT5Tokenizer().save_pretrained(tmp_path / "byt5")
    code, stderr = run_main(capsys, "--model", hf_model("bert"), "--tokenizer", tmp_path / "byt5",
                            "--output-dir", tmp_path / "out")
    assert code != 0
    assert "ByT5Tokenizer" in the_error(stderr) and "cannot be converted to a fast one" in the_error(stderr)
    assert_nothing_written(tmp_path / "out")


def test_parity_failure_is_reported_with_figures(capsys, hf_model, tmp_path: Path) -> None:
    """Logits of ~1e7 (a real, if extreme, classifier head): float32 rounding alone exceeds the tolerance."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(hf_model("bert"))
    with torch.no_grad():
        model.classifier.weight.mul_(1e8)
    model.save_pretrained(tmp_path / "loud")
    code, stderr = run_main(capsys, "--model", tmp_path / "loud", "--tokenizer", hf_model("bert"),
                            "--output-dir", tmp_path / "out")
    assert code != 0
    message = the_error(stderr)
    assert "parity check failed" in message and "max |logit diff|" in message and "tolerance 1e-04" in message
    assert_nothing_written(tmp_path / "out")


def test_output_directory_with_other_files_is_refused(capsys, hf_model, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, stderr = run_main(capsys, "--model", hf_model("bert"), "--output-dir", out)
    assert code != 0 and "already holds other files (notes.txt)" in the_error(stderr)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_opset_out_of_range(capsys, hf_model, tmp_path: Path) -> None:
    code, stderr = run_main(capsys, "--model", hf_model("bert"), "--opset", "25", "--output-dir", tmp_path / "out")
    assert code != 0 and "opset 25 is out of range" in the_error(stderr)
    assert_nothing_written(tmp_path / "out")


def test_revision_for_a_local_directory(capsys, hf_model, tmp_path: Path) -> None:
    code, stderr = run_main(capsys, "--model", hf_model("bert"), "--model-revision", "v1",
                            "--output-dir", tmp_path / "out")
    assert code != 0 and "does not apply to a local directory" in the_error(stderr)
    assert_nothing_written(tmp_path / "out")
