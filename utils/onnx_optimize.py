"""Optional speed-ups of an exported classifier, each checked before it replaces model.onnx.

* Fusion (`--fuse`): ONNX Runtime's transformer optimizer (`onnxruntime.transformers.optimizer`, model_type
  bert) folds each encoder layer's attention, GELU and LayerNorm subgraphs into single contrib operators
  (Attention, BiasGelu, SkipLayerNormalization). transformers 5 exports the padding mask as a 4-D
  `Where(...)` subgraph and reshapes Q/K/V to [batch, sequence, -1, head_size], neither of which the
  optimizer recognises, so attention would stay unfused. When the mask subgraph is proven (by running it) to
  compute exactly "0 where attention_mask is 1, one large negative value where it is 0", it is first replaced
  by a pattern the optimizer knows, and the -1 is replaced by the config's head count. The fused graph then
  goes through the converter's normal parity check against PyTorch (tolerance 1e-4).
* Dynamic int8 quantization (`--quantize`): `onnxruntime.quantization.quantize_dynamic`, int8 weights
  (per output channel) and uint8 activations quantized at run time. It cannot meet a 1e-4 logit tolerance,
  so it is judged against the fp32 model it came from on the probe texts: top-label agreement and the largest
  difference of the served values (the pipeline's function of the logits: softmax or sigmoid probabilities, a
  regression head's raw value), each with a threshold; both are logged and recorded in conversion_report.json.

Graph inputs and outputs are never changed (int64 input_ids, attention_mask [, token_type_ids] -> logits), so
the Triton template, utils/validate_artifacts.py and Triton's native ONNX Runtime backend take the result as is.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from model_repository.tritoned_heads import apply
from utils.parity import ParityError, ParityFigures, encode_served, onnx_logits, probe_texts

LOGGER = logging.getLogger(__name__)

OPTIMIZER_MODEL_TYPE = "bert"  # the optimizer's BERT fusions also match RoBERTa/XLM-R/DistilBERT-style encoders
DEFAULT_MIN_AGREEMENT = 0.9
DEFAULT_MAX_PROB_DIFF = 0.5  # near-tie texts legitimately swap their top two classes
# A padding mask value at or below this is "minus infinity" for softmax (transformers uses float32 min).
MASK_VALUE_CEILING = -1e4
MASK_CHECK_LENGTHS = (5, 2, 7, 1)  # right-padded probe batch for proving the mask rewrite


class OptimizationError(Exception):
    """An optimization failed or broke the model; the message names the option and the figures."""


@dataclass(frozen=True)
class OptimizeOptions:
    """What to do after export: fuse, quantize (in that order), and the int8 thresholds."""

    fuse: bool = False
    quantize: bool = False
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_prob_diff: float = DEFAULT_MAX_PROB_DIFF

    @property
    def enabled(self) -> bool:
        return self.fuse or self.quantize


@dataclass(frozen=True)
class ServedInputs:
    """How Triton's text_preprocessing encodes texts for this model (see utils/parity.encode_served)."""

    tokenizer_json: Path
    max_length: int
    input_names: Sequence[str]
    pad_id: int
    function: str = "softmax"  # what post_processing applies to the logits (tritoned_heads)


@dataclass(frozen=True)
class AgreementFigures:
    """int8 against fp32 on the probe texts (each text alone and in padded batches)."""

    texts: int
    comparisons: int
    label_agreement: float
    label_mismatches: int
    max_prob_diff: float
    mean_prob_diff: float
    min_agreement: float
    max_prob_diff_allowed: float
    passed: bool

    def summary(self) -> str:
        return (f"{self.texts} probe texts, alone and in padded batches ({self.comparisons} answers): top-label "
                f"agreement {self.label_agreement:.1%} (minimum {self.min_agreement:.1%}, {self.label_mismatches} "
                f"differ), max |probability diff| "
                f"{self.max_prob_diff:.4f} (allowed {self.max_prob_diff_allowed:.4f}), mean {self.mean_prob_diff:.4f}")


# ------------------------------------------------------------------------------------------------ graph helpers

@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """onnxruntime's optimizer and quantizer log every step (the quantizer on the root logger, with an advice
    to pre-process that does not apply here); only errors get through while they run."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _io_signature(model: Any) -> tuple[list[tuple[str, int]], list[str]]:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [(value.name, value.type.tensor_type.elem_type) for value in model.graph.input
              if value.name not in initializers]
    return inputs, [value.name for value in model.graph.output]


def _check_same_io(before: Any, after_path: Path, step: str) -> None:
    after = _load(after_path)
    if _io_signature(before) != _io_signature(after):
        raise OptimizationError(f"{step} changed the model's inputs/outputs from {_io_signature(before)} to "
                                f"{_io_signature(after)}; convert without {step}")


def _padding_mask_candidates(model: Any) -> set[str]:
    """Tensors added to the attention scores right before each Softmax (the additive attention mask)."""
    producer = {output: node for node in model.graph.node for output in node.output}
    masks: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        add = producer.get(node.input[0])
        if add is None or add.op_type != "Add":
            continue
        for name in add.input:
            parent = producer.get(name)
            if parent is None or parent.op_type not in ("Mul", "Div", "MatMul"):  # not the scaled scores
                masks.add(name)
    return masks


def _mask_value(model: Any, mask: str) -> float | None:
    """Run the graph up to `mask` on a right-padded batch; the masked value if it is exactly the padding mask
    (0 where attention_mask is 1, one large negative value where it is 0, for every query row), else None."""
    import onnx
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.append(onnx.helper.make_tensor_value_info(mask, onnx.TensorProto.FLOAT, None))
    longest = max(MASK_CHECK_LENGTHS)
    attention = np.array([[1] * n + [0] * (longest - n) for n in MASK_CHECK_LENGTHS], dtype=np.int64)
    feed = {"input_ids": attention, "attention_mask": attention, "token_type_ids": np.zeros_like(attention)}
    names = {value.name for value in model.graph.input}
    try:
        session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        value = session.run([mask], {name: array for name, array in feed.items() if name in names})[0]
    except Exception as err:  # onnxruntime raises its own types
        LOGGER.debug("mask probe failed: %s", err)
        return None
    if value.ndim != 4 or value.shape[0] != len(MASK_CHECK_LENGTHS) or value.shape[-1] != longest:
        return None
    masked = value[np.broadcast_to(attention[:, None, None, :] == 0, value.shape)]
    kept = value[np.broadcast_to(attention[:, None, None, :] == 1, value.shape)]
    if masked.size == 0 or not np.all(kept == 0) or not np.all(masked == masked[0]):
        return None
    fill = float(masked[0])
    return fill if np.isfinite(fill) and fill <= MASK_VALUE_CEILING else None


def rewrite_padding_mask(model: Any) -> bool:
    """Replace a 4-D padding-mask subgraph by `where(1 - m, value, 1 - m)` with m = attention_mask as float,
    [batch, 1, 1, sequence] (the SDPA-style pattern onnxruntime's attention fusion matches). Returns whether
    the graph was changed; it is changed only when every layer uses one mask tensor and running that tensor
    on a padded batch proves it is exactly the padding mask."""
    import onnx
    from onnx import TensorProto, helper

    names = {value.name for value in model.graph.input}
    masks = _padding_mask_candidates(model)
    if "attention_mask" not in names or len(masks) != 1:
        LOGGER.info("Fusion: no single additive attention mask found (%d candidates); mask left as exported",
                    len(masks))
        return False
    mask = masks.pop()
    producer = {output: node for node in model.graph.node for output in node.output}
    if producer.get(mask) is not None and producer[mask].op_type == "Mul":
        return False  # already the classic form
    fill = _mask_value(model, mask)
    if fill is None:
        LOGGER.info("Fusion: the attention mask %s is not a plain padding mask; left as exported", mask)
        return False
    prefix = "tritoned_padding_mask"
    model.graph.initializer.extend([
        helper.make_tensor(f"{prefix}_axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor(f"{prefix}_axis2", TensorProto.INT64, [1], [2]),
        helper.make_tensor(f"{prefix}_ones", TensorProto.INT64, [4], [1, 1, 1, 1]),
        helper.make_tensor(f"{prefix}_one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor(f"{prefix}_fill", TensorProto.FLOAT, [], [fill]),
    ])
    # where(1 - mask, fill, 1 - mask) over [batch, 1, 1, sequence]: the SDPA-style pattern of the optimizer.
    new_nodes = [
        helper.make_node("Unsqueeze", ["attention_mask", f"{prefix}_axis1"], [f"{prefix}_u1"], name=f"{prefix}_u1"),
        helper.make_node("Unsqueeze", [f"{prefix}_u1", f"{prefix}_axis2"], [f"{prefix}_u2"], name=f"{prefix}_u2"),
        helper.make_node("Expand", [f"{prefix}_u2", f"{prefix}_ones"], [f"{prefix}_expanded"], name=f"{prefix}_expand"),
        helper.make_node("Cast", [f"{prefix}_expanded"], [f"{prefix}_float"], name=f"{prefix}_cast",
                         to=TensorProto.FLOAT),
        helper.make_node("Sub", [f"{prefix}_one", f"{prefix}_float"], [f"{prefix}_inverted"], name=f"{prefix}_sub"),
        helper.make_node("Cast", [f"{prefix}_inverted"], [f"{prefix}_padding"], name=f"{prefix}_bool",
                         to=TensorProto.BOOL),
        helper.make_node("Where", [f"{prefix}_padding", f"{prefix}_fill", f"{prefix}_inverted"], [f"{prefix}_mask"],
                         name=f"{prefix}_where"),
    ]
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            if name == mask:
                node.input[position] = f"{prefix}_mask"
    # Topological order: the new nodes only need the graph input, so they go first.
    nodes = new_nodes + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    LOGGER.info("Fusion: replaced the exported 4-D padding mask %s by where(1 - mask, %.3g, 0)", mask, fill)
    return True


def _constant_ints(model: Any, name: str) -> list[int] | None:
    """The int64 values of an initializer or Constant node output, else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).reshape(-1).tolist()
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t).reshape(-1).tolist()
    return None


def pin_head_count(model: Any, heads: int, hidden: int) -> int:
    """transformers 5 reshapes Q/K/V to [batch, sequence, -1, head_size]; the optimizer reads the head count from
    that shape, so the -1 is replaced by the config's head count (the same shape for a [.., hidden] input).
    Returns how many reshapes were pinned."""
    from onnx import TensorProto, helper

    if heads <= 0 or hidden <= 0 or hidden % heads:
        return 0
    producer = {output: node for node in model.graph.node for output in node.output}
    name = "tritoned_num_heads"
    pinned = 0
    for node in model.graph.node:
        concat = producer.get(node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        head_size = _constant_ints(model, concat.input[3])
        if _constant_ints(model, concat.input[2]) == [-1] and head_size == [hidden // heads]:
            concat.input[2] = name
            pinned += 1
    if pinned:
        model.graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], [heads]))
        LOGGER.info("Fusion: pinned the head count (%d) in %d reshapes", heads, pinned)
    return pinned


def _heads_and_hidden(config: Any) -> tuple[int, int]:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or 0
    return int(heads), int(hidden)


# ------------------------------------------------------------------------------------------------------ fusion

def fuse(source: Path, target: Path, config: Any) -> dict[str, Any]:
    """Write the fused graph of `source` to `target`; returns what was fused."""
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    original = _load(source)
    model = _load(source)
    heads, hidden = _heads_and_hidden(config)
    try:
        rewritten = rewrite_padding_mask(model)
        pinned = pin_head_count(model, heads, hidden)
    except Exception as err:  # onnx raises many types; fusing the graph as exported is still correct
        LOGGER.warning("Fusion: preparing the graph failed (%s: %s); fusing it as exported", type(err).__name__, err)
        model, rewritten, pinned = _load(source), False, 0
    options = FusionOptions(OPTIMIZER_MODEL_TYPE)
    # The raw 2-D mask: correct for any padding side (MaskIndexEnd would assume right padding).
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    try:
        with quiet_third_party():
            optimized: BertOnnxModel = optimize_by_fusion(model, model_type=OPTIMIZER_MODEL_TYPE, num_heads=heads,
                                                          hidden_size=hidden, optimization_options=options)
            fused = {name: int(count) for name, count in optimized.get_fused_operator_statistics().items() if count}
            optimized.save_model_to_file(str(target))
    except Exception as err:  # the optimizer raises many types on graphs it does not understand
        raise OptimizationError(f"--fuse: onnxruntime's transformer optimizer failed ({type(err).__name__}: {err}); "
                                "convert without --fuse") from err
    _check_same_io(original, target, "--fuse")
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layers", 0) or 0)
    attention = fused.get("Attention", 0) + fused.get("MultiHeadAttention", 0)
    if layers and attention < layers:
        LOGGER.warning("Fusion: only %d of %d attention layers fused (%s); the rest run unfused", attention, layers,
                       fused)
    LOGGER.info("Fusion: %s", ", ".join(f"{name} x{count}" for name, count in sorted(fused.items())) or "nothing")
    return {"optimizer_model_type": OPTIMIZER_MODEL_TYPE, "num_heads": heads, "hidden_size": hidden,
            "padding_mask_rewritten": rewritten, "head_count_pinned": pinned, "fused_operators": fused,
            "attention_layers_fused": attention, "layers": layers}


# ------------------------------------------------------------------------------------------------ quantization

def quantize_int8(source: Path, target: Path) -> dict[str, Any]:
    """Dynamic int8 quantization of `source` into `target`: the weights of every MatMul (and of a fused graph's
    Attention) become per-output-channel int8; activations are quantized to uint8 at run time. Gemm nodes (the
    pooler and the classification head: one vector per text, no time to win) stay fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    original = _load(source)
    op_types = ["MatMul", "Attention"]
    try:
        with quiet_third_party():
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=False, op_types_to_quantize=op_types,
                             # contrib ops of a fused graph have no shape inference: their outputs are float
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    except Exception as err:  # the quantizer raises many types
        raise OptimizationError(f"--quantize: onnxruntime's quantize_dynamic failed ({type(err).__name__}: {err}); "
                                "convert without --quantize") from err
    _check_same_io(original, target, "--quantize")
    quantized = sum(1 for node in _load(target).graph.node if node.op_type in ("MatMulInteger", "QAttention"))
    LOGGER.info("Quantization: %d MatMul/Attention nodes now run in int8", quantized)
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8", "per_channel": True,
            "reduce_range": False, "op_types": op_types, "quantized_nodes": quantized}


def compare_int8(reference: Path, candidate: Path, served: ServedInputs, min_agreement: float,
                 max_prob_diff: float, texts: Sequence[str] | None = None) -> AgreementFigures:
    """Top labels and probabilities of `candidate` against `reference` on the probe texts, each text alone and
    in padded batches (as dynamic batching runs them)."""
    from tokenizers import Tokenizer

    if texts is None:
        tokenizer = Tokenizer.from_file(str(served.tokenizer_json))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        texts = probe_texts(lambda text: len(tokenizer.encode(text).ids), served.max_length)
    rows = encode_served(served.tokenizer_json, texts, served.max_length, served.input_names)
    expected = np.concatenate([apply(served.function, onnx_logits(reference, rows, served.pad_id, size))
                               for size in (1, 4)])
    actual = np.concatenate([apply(served.function, onnx_logits(candidate, rows, served.pad_id, size))
                             for size in (1, 4)])
    diff = np.abs(expected - actual)
    mismatches = int(np.count_nonzero(expected.argmax(axis=1) != actual.argmax(axis=1)))
    agreement = 1.0 - mismatches / len(expected)
    return AgreementFigures(
        texts=len(rows), comparisons=len(expected), label_agreement=agreement, label_mismatches=mismatches,
        max_prob_diff=float(diff.max()),
        mean_prob_diff=float(diff.mean()), min_agreement=min_agreement, max_prob_diff_allowed=max_prob_diff,
        passed=bool(agreement >= min_agreement and diff.max() <= max_prob_diff))


# -------------------------------------------------------------------------------------------------------- driver

def optimize(model_path: Path, options: OptimizeOptions, config: Any, served: ServedInputs,
             parity: Callable[[Path], ParityFigures]) -> dict[str, Any]:
    """Fuse and/or quantize `model_path` in place; returns the report entries.

    `parity(path)` is the converter's check against PyTorch (raises ParityError). Raises OptimizationError or
    ParityError with the figures when a step breaks the model; `model_path` is then left as it was.
    """
    report: dict[str, Any] = {}
    if not options.enabled:
        return report
    work = model_path.parent / ".optimize"
    work.mkdir()
    try:
        current = model_path
        if options.fuse:
            fused = work / "fused.onnx"
            report["fusion"] = fuse(current, fused, config)
            try:
                report["fusion"]["parity"] = parity(fused).as_dict()
            except ParityError as err:
                raise ParityError(f"--fuse broke parity with PyTorch (fp32 fusion is expected to stay within the "
                                  f"tolerance; convert without --fuse): {err}") from err
            current = fused
        if options.quantize:
            quantized = work / "int8.onnx"
            report["quantization"] = quantize_int8(current, quantized)
            figures = compare_int8(current, quantized, served, options.min_agreement, options.max_prob_diff)
            report["quantization"]["agreement"] = asdict(figures)
            report["quantization"]["reference"] = "fused fp32" if options.fuse else "fp32"
            report["quantization"]["passed"] = figures.passed
            LOGGER.info("int8 vs fp32: %s", figures.summary())
            if not figures.passed:
                raise OptimizationError(
                    f"--quantize: the int8 model disagrees with fp32 beyond the thresholds: {figures.summary()}. "
                    "Convert without --quantize, or accept it explicitly with a lower --int8-min-agreement / "
                    "higher --int8-max-prob-diff")
            current = quantized
        shutil.copyfile(current, model_path.with_suffix(".optimized"))
        model_path.with_suffix(".optimized").replace(model_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report
