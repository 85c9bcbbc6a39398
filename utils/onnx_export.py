"""Torch -> ONNX export of a sequence classifier, as the Triton template expects it.

Inputs are int64 `input_ids`, `attention_mask` and, only when the model uses them, `token_type_ids`, each
[batch, sequence] with both axes dynamic; the single output is `logits` [batch, num_labels]. The TorchScript
(legacy) exporter is used (`dynamo=False`): it handles the whole BERT family at a fixed opset.
"""
from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

LOGGER = logging.getLogger(__name__)

OUTPUT_NAME = "logits"
REQUIRED_INPUTS = ("input_ids", "attention_mask")
OPTIONAL_INPUT = "token_type_ids"
DYNAMIC_AXES = {0: "batch", 1: "sequence"}
MIN_OPSET = 14  # scaled_dot_product_attention and triu need 14
MAX_OPSET = 21  # ONNX Runtime 1.19 (Triton 24.10) runs opsets up to 21
ONNX_INT64 = 7  # onnx.TensorProto.INT64


class ExportError(Exception):
    """The model cannot be exported as the template needs it; the message names the architecture and the fix."""


def architecture_of(model: Any) -> str:
    architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
    return str(architectures[0])


def select_inputs(model: Any, tokenizer_inputs: Sequence[str]) -> list[str]:
    """The ONNX inputs: input_ids and attention_mask, plus token_type_ids only when the model takes them from the
    tokenizer (the tokenizer produces them, forward() accepts them, and the config has token type embeddings)."""
    parameters = inspect.signature(model.forward).parameters
    missing = [name for name in REQUIRED_INPUTS if name not in parameters]
    if missing:
        raise ExportError(f"architecture {architecture_of(model)} cannot be exported: its forward() takes no "
                          f"{' / '.join(missing)}, so it is not a text classifier the template can serve")
    names = list(REQUIRED_INPUTS)
    type_vocab_size = getattr(model.config, "type_vocab_size", None)
    if (OPTIONAL_INPUT in tokenizer_inputs and OPTIONAL_INPUT in parameters
            and (type_vocab_size is None or type_vocab_size > 0)):
        names.append(OPTIONAL_INPUT)
    return names


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is out of range; use {MIN_OPSET}..{MAX_OPSET} (the Triton release's "
                          f"ONNX Runtime runs up to {MAX_OPSET})")


def _logits_module(model: Any, input_names: Sequence[str]) -> Any:
    import torch

    class LogitsOnly(torch.nn.Module):
        """Positional int64 tensors in `input_names` order -> logits (the exporter traces positional args)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(input_names, tensors)), return_dict=True).logits

    return LogitsOnly().eval()


def export_onnx(model: Any, sample: Mapping[str, Any], input_names: Sequence[str], path: Path, opset: int) -> None:
    """Trace `model` on `sample` (int64 tensors [batch, sequence], with padding) and write `path`."""
    import torch

    check_opset(opset)
    args = tuple(sample[name].to(torch.int64) for name in input_names)
    dynamic_axes: dict[str, dict[int, str]] = {name: dict(DYNAMIC_AXES) for name in input_names}
    dynamic_axes[OUTPUT_NAME] = {0: "batch"}
    LOGGER.info("Exporting %s to ONNX (opset %d, inputs %s)", architecture_of(model), opset, ", ".join(input_names))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python branches are expected
            torch.onnx.export(
                _logits_module(model, input_names), args, str(path), input_names=list(input_names),
                output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
                do_constant_folding=True,
            )
    except Exception as err:  # the exporter raises many unrelated types for unsupported operators
        raise ExportError(f"architecture {architecture_of(model)} cannot be exported to ONNX opset {opset} "
                          f"({type(err).__name__}: {err}); try another --opset, or a model with a standard "
                          "AutoModelForSequenceClassification head") from err


def check_exported(path: Path, input_names: Sequence[str], num_labels: int) -> None:
    """The file is valid ONNX with exactly the contracted inputs and output."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:
        raise ExportError(f"the exported {path.name} is not a valid ONNX model ({err})") from err
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = {value.name: value for value in graph.input if value.name not in initializers}
    if list(inputs) != list(input_names):
        raise ExportError(f"the exported model has inputs {list(inputs)}, expected {list(input_names)}")
    for name, value in inputs.items():
        tensor = value.type.tensor_type
        if tensor.elem_type != ONNX_INT64 or [d.dim_param for d in tensor.shape.dim] != list(DYNAMIC_AXES.values()):
            raise ExportError(f"the exported input {name} is not int64 [batch, sequence]")
    outputs = {value.name: value for value in graph.output}
    if list(outputs) != [OUTPUT_NAME]:
        raise ExportError(f"the exported model has outputs {list(outputs)}, expected ['{OUTPUT_NAME}']")
    dims = list(outputs[OUTPUT_NAME].type.tensor_type.shape.dim)
    if len(dims) != 2 or dims[1].dim_value != num_labels:
        raise ExportError(f"the exported logits have shape {[d.dim_param or d.dim_value for d in dims]}, expected "
                          f"[batch, {num_labels}]: the model is not a sequence classifier with {num_labels} labels")
