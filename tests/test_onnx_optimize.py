"""utils/convert_to_onnx.py --fuse / --quantize (utils/onnx_optimize.py) on a tiny BERT: the options change the
graph, the report records them, make_triton_image.sh takes the result, the served answers agree with PyTorch
(fused: within the parity tolerance; int8: with the same top labels), and a failing int8 threshold is a clear
error that leaves no output behind."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import tritonclient.http as httpclient

from conftest import ROOT, Artifacts, make_image, run
from reference import labels_of, pytorch_probabilities
from tiny_models import BUILDERS

sys.path.insert(0, str(ROOT))

from utils.onnx_optimize import rewrite_padding_mask  # noqa: E402
from utils.validate_artifacts import validate  # noqa: E402

MODEL_NAME = "ensemble_model"
TEXTS = ["помогите мне", "where is my order", "I want a refund for this item", "спасибо за помощь 🙂", "",
         "help " * 200]
FUSED_OPS = {"Attention", "SkipLayerNormalization"}
INT8_OPS = {"MatMulInteger", "QAttention", "DynamicQuantizeLinear"}


def convert(hf_dir: Path, out_dir: Path, *options: str):
    return run([sys.executable, "utils/convert_to_onnx.py", "--model", str(hf_dir), "--output-dir", str(out_dir),
                *options])


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def report_of(artifacts: Artifacts) -> dict:
    return json.loads((artifacts.out_dir / "conversion_report.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory) -> Path:
    return BUILDERS["bert"](tmp_path_factory.mktemp("optimize") / "hf")


@pytest.fixture(scope="module")
def variants(hf_bert, tmp_path_factory) -> dict[str, Artifacts]:
    """The tiny BERT converted plain, fused, and fused + int8."""
    base = tmp_path_factory.mktemp("variants")
    built = {}
    # The tiny random model has many near-tie texts, whose int8 label may flip with the order of float sums
    # (measured 86-91% agreement across runs): its threshold is lowered to what this model can keep.
    int8 = ["--fuse", "--quantize", "--int8-min-agreement", "0.5"]
    for name, options in {"plain": [], "fused": ["--fuse"], "int8": int8}.items():
        result = convert(hf_bert, base / name, *options)
        assert result.returncode == 0, result.stderr[-4000:]
        built[name] = Artifacts(hf_dir=hf_bert, out_dir=base / name)
    return built


def test_fuse_fuses_attention_and_keeps_the_contract(variants) -> None:
    plain, fused = variants["plain"], variants["fused"]
    assert not FUSED_OPS & op_types(plain.model)
    assert FUSED_OPS <= op_types(fused.model)
    report = report_of(fused)["optimization"]
    assert report["fused"] is True and report["quantized"] is False
    assert report["fusion"]["attention_layers_fused"] == report["fusion"]["layers"] == 2
    assert report["fusion"]["padding_mask_rewritten"] is True  # transformers 5's 4-D mask, else nothing fuses
    assert report["fusion"]["parity"]["passed"] is True
    assert report["fusion"]["parity"]["max_abs_logit_diff"] <= 1e-4
    # Same inputs (int64), same output: the template and the validator take it as is.
    assert validate(fused.model, fused.tokenizer, fused.id2label)["HAS_TOKEN_TYPE_IDS"] == 1


def test_quantize_records_agreement_and_the_final_sha(variants) -> None:
    int8 = variants["int8"]
    assert INT8_OPS & op_types(int8.model)
    report = report_of(int8)
    quantization = report["optimization"]["quantization"]
    agreement = quantization["agreement"]
    assert quantization["passed"] is True and agreement["passed"] is True
    assert agreement["label_agreement"] >= agreement["min_agreement"]
    assert 0 < agreement["max_prob_diff"] <= agreement["max_prob_diff_allowed"]  # int8 is not bit-exact
    assert agreement["comparisons"] == 2 * agreement["texts"]
    import hashlib

    assert report["model_sha256"] == hashlib.sha256(int8.model.read_bytes()).hexdigest()  # of the FINAL file
    validate(int8.model, int8.tokenizer, int8.id2label)  # raises on any problem
    assert report["parity"]["passed"] is True  # the fp32 export it came from


def test_padding_mask_rewrite_computes_the_same_logits(variants, tmp_path) -> None:
    """The rewritten mask subgraph gives bit-for-bit the logits of the exported one on a right-padded batch."""
    model = onnx.load(str(variants["plain"].model))
    assert rewrite_padding_mask(model) is True
    rewritten = tmp_path / "rewritten.onnx"
    onnx.save(model, str(rewritten))
    attention = np.array([[1] * 9, [1] * 4 + [0] * 5, [1] * 2 + [0] * 7], dtype=np.int64)
    feed = {"input_ids": np.where(attention == 1, 7, 0), "attention_mask": attention,
            "token_type_ids": np.zeros_like(attention)}
    outputs = [onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
               for path in (variants["plain"].model, rewritten)]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)


def test_failing_int8_threshold_is_a_clear_error(hf_bert, tmp_path) -> None:
    out = tmp_path / "out"
    result = convert(hf_bert, out, "--quantize", "--int8-max-prob-diff", "0")
    assert result.returncode == 1
    assert "--quantize: the int8 model disagrees with fp32 beyond the thresholds" in result.stderr
    assert "top-label agreement" in result.stderr and "max |probability diff|" in result.stderr
    assert "--int8-max-prob-diff" in result.stderr  # names the knob
    assert not out.exists()  # nothing half-written


def test_threshold_out_of_range_is_rejected(hf_bert, tmp_path) -> None:
    result = convert(hf_bert, tmp_path / "out", "--quantize", "--int8-min-agreement", "1.5")
    assert result.returncode == 2
    assert "--int8-min-agreement" in result.stderr and "from 0 to 1" in result.stderr


def served_probabilities(variant: Artifacts, serve, build_dir: Path) -> tuple[list[str], np.ndarray]:
    result = make_image(variant, build_dir, "--no-build")
    assert result.returncode == 0, result.stderr
    repository = build_dir / MODEL_NAME / "context" / "model_repository"
    server = serve(repository, build_dir / "server.log", build_dir)
    client = httpclient.InferenceServerClient(server.http_url)
    labels, rows = [], []
    for text in TEXTS:
        inp = httpclient.InferInput("text_input", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        answer = client.infer(MODEL_NAME, [inp])
        labels.append(answer.as_numpy("label").reshape(-1)[0].decode())
        rows.append(answer.as_numpy("probabilities")[0])
    server.stop()
    return labels, np.stack(rows)


def test_served_fused_and_int8_answers_agree_with_pytorch(variants, serve, tmp_path_factory) -> None:
    hf_dir = variants["plain"].hf_dir
    expected = pytorch_probabilities(hf_dir, TEXTS, 64)
    expected_labels = labels_of(expected, variants["plain"].labels())

    labels, probabilities = served_probabilities(variants["fused"], serve, tmp_path_factory.mktemp("serve-fused"))
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert labels == expected_labels

    labels, probabilities = served_probabilities(variants["int8"], serve, tmp_path_factory.mktemp("serve-int8"))
    allowed = report_of(variants["int8"])["optimization"]["quantization"]["agreement"]["max_prob_diff"]
    np.testing.assert_allclose(probabilities, expected, atol=max(2 * allowed, 1e-3))
    top_two = np.sort(expected, axis=1)[:, -2:]
    clear = (top_two[:, 1] - top_two[:, 0]) > 2 * max(2 * allowed, 1e-3)  # labels may differ only on near-ties
    assert [a for a, c in zip(labels, clear) if c] == [e for e, c in zip(expected_labels, clear) if c]


def test_a_quantized_model_is_not_batched_with_other_requests(variants, tmp_path) -> None:
    """Dynamic int8 picks one activation scale per run: batched, a text's answer would depend on its neighbours.
    make_triton_image.sh turns model_onnx's dynamic batching off for a quantized model only."""
    for name, batched in (("fused", True), ("int8", False)):
        build_dir = tmp_path / name
        result = make_image(variants[name], build_dir, "--no-build")
        assert result.returncode == 0, result.stderr
        repository = build_dir / MODEL_NAME / "context" / "model_repository"
        config = (repository / "model_onnx" / "config.pbtxt").read_text()
        assert ("dynamic_batching {" in config) is batched, f"{name}:\n{config}"
        # Sized at start accordingly (gateway/sizing.py: a model never batched gets single-thread instances).
        assert json.loads((repository / "tritoned.json").read_text())["sizing"]["model_batching"] is batched
