"""The serving path's floor: an assembled repository whose three Python models do no work, so that the CPU its server
spends per text is what the design itself costs (the gateway, tritonserver's HTTP/gRPC and ensemble scheduling, three
Python backend stubs and the hops between them) on this machine, with free models.

floor_repository() copies an assembled repository (make_triton_image.sh --no-build) and puts stand-ins in place of the
three model.py files; configs, instance counts, the ensemble and the manifest stay as assembled, so the gateway sizes
and probes it as the real one. The stand-ins:
- text_preprocessing: every text becomes TOKENS fixed token ids (input_ids, attention_mask, token_type_ids as the
  config has them); no tokenizer.
- model_onnx: logits of zeros, after sleeping `seconds_per_text` per text of the call: the model's time without its
  CPU, so that requests queue and batch as they do before the real model (a model that answered at once would batch
  far more, and look cheaper per text, than the pipeline it stands for).
- post_processing: the first label with score 1.0 for every text.
None records model metrics (their cost is `--no-model-metrics`'s difference in bench/process_cost.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

TOKENS = 32  # token ids per text: a short support text's length; the size of a tensor costs next to nothing here
MODELS = ("text_preprocessing", "model_onnx", "post_processing")

_HEADER = '''"""A stand-in of bench/floor.py: the model's inputs and outputs, none of its work."""
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class StandIn:
    """One response per request, its tensors from tensors(rows); wait(texts) once the call's responses are made."""
    INPUT = ""

    def initialize(self, args):
        self.outputs = {{output["name"]: output for output in json.loads(args["model_config"])["output"]}}

    def execute(self, requests):
        rows = [pb_utils.get_input_tensor_by_name(request, self.INPUT).as_numpy().shape[0] for request in requests]
        responses = [pb_utils.InferenceResponse(output_tensors=self.tensors(count)) for count in rows]
        self.wait(sum(rows))
        return responses

    def wait(self, texts):
        pass

'''

TEXT_PREPROCESSING = _HEADER + '''
VALUES = {{"input_ids": 5, "attention_mask": 1, "token_type_ids": 0}}


class TritonPythonModel(StandIn):
    INPUT = "text_input"

    def tensors(self, rows):
        return [pb_utils.Tensor(name, np.full((rows, {tokens}), VALUES.get(name, 0), dtype=np.int64))
                for name in self.outputs]
'''

MODEL_ONNX = _HEADER + '''
SECONDS_PER_TEXT = {seconds!r}


class TritonPythonModel(StandIn):
    INPUT = "input_ids"

    def tensors(self, rows):
        return [pb_utils.Tensor("logits", np.zeros((rows, int(self.outputs["logits"]["dims"][0])), dtype=np.float32))]

    def wait(self, texts):
        time.sleep(SECONDS_PER_TEXT * texts)
'''

POST_PROCESSING = _HEADER + '''
LABEL = {label!r}


class TritonPythonModel(StandIn):
    INPUT = "logits"

    def tensors(self, rows):
        tensors = []
        for name, output in self.outputs.items():
            width = int(output["dims"][0])
            if name in ("label", "labels"):
                tensors.append(pb_utils.Tensor(name, np.full((rows, width), LABEL.encode(), dtype=np.object_)))
            else:
                tensors.append(pb_utils.Tensor(name, np.full((rows, width), 1.0 / width, dtype=np.float32)))
        return tensors
'''


class FloorError(ValueError):
    """The repository is not one make_triton_image.sh assembled."""


def first_label(repository: Path) -> str:
    """The first class name of the assembled repository (post_processing's labels.txt, id order)."""
    labels = repository / "post_processing" / "labels.txt"
    try:
        return labels.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError) as error:
        raise FloorError(f"{labels}: no class names ({error}); assemble the repository with "
                         "make_triton_image.sh --no-build") from None


def floor_repository(repository: Path, destination: Path, seconds_per_text: float) -> Path:
    """A copy of the assembled `repository` in `destination` (replaced if there) with the stand-in models;
    `seconds_per_text`: how long the model_onnx stand-in sleeps per text (raw ONNX Runtime's time per text)."""
    if seconds_per_text < 0:
        raise FloorError(f"seconds_per_text must be >= 0, got {seconds_per_text}")
    for model in MODELS:
        if not (repository / model / "1" / "model.py").is_file():
            raise FloorError(f"{repository}/{model}/1/model.py is missing: not an assembled repository")
    label = first_label(repository)
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(repository, destination, symlinks=True)
    sources = {"text_preprocessing": TEXT_PREPROCESSING.format(tokens=TOKENS),
               "model_onnx": MODEL_ONNX.format(seconds=seconds_per_text),
               "post_processing": POST_PROCESSING.format(label=label)}
    for model, source in sources.items():
        (destination / model / "1" / "model.py").write_text(source, encoding="utf-8")
    return destination
