"""An ONNX Runtime backend for Triton, written in Python.

Triton loads it as the Python-based backend "onnxruntime" when it lies at
`<backend-directory>/onnxruntime/model.py` and no native `libtriton_onnxruntime.so` is there. A model
with `backend: "onnxruntime"` therefore runs unchanged here (local serving, the stand-in image) and on
Triton's native ONNX Runtime backend in the NGC image.

It honours the native backend's config: `default_model_filename` (default model.onnx) and the
parameters `intra_op_thread_count` / `inter_op_thread_count`. Requests that arrive together (dynamic
batching) and share a shape are concatenated into one `session.run`; if that run fails, the requests are
run one by one, so only the request that caused the failure gets an error.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

DEFAULT_MODEL_FILENAME = "model.onnx"


def int_parameter(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return int(value) if value.strip() else default


def session_options(config: dict[str, Any]) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = int_parameter(config, "intra_op_thread_count", 0)
    options.inter_op_num_threads = int_parameter(config, "inter_op_thread_count", 0)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the cores the tokenizer and the other instances need between calls.
    allow_spinning = int_parameter(config, "intra_op_allow_spinning", 0)
    options.add_session_config_entry("session.intra_op.allow_spinning", str(allow_spinning))
    return options


def check_io(session: ort.InferenceSession, config: dict[str, Any], path: str) -> None:
    """The config's inputs/outputs must be exactly the graph's: fail the load with both lists otherwise."""
    graph_inputs = {i.name for i in session.get_inputs()}
    graph_outputs = {o.name for o in session.get_outputs()}
    config_inputs = {i["name"] for i in config.get("input", [])}
    config_outputs = {o["name"] for o in config.get("output", [])}
    if config_inputs != graph_inputs or not config_outputs <= graph_outputs:
        raise ValueError(
            f"{path}: model inputs {sorted(graph_inputs)} / outputs {sorted(graph_outputs)} do not match "
            f"config inputs {sorted(config_inputs)} / outputs {sorted(config_outputs)}"
        )


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        filename = config.get("default_model_filename") or DEFAULT_MODEL_FILENAME
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model file not found: {path}")
        self.session = ort.InferenceSession(path, session_options(config), providers=["CPUExecutionProvider"])
        check_io(self.session, config, path)
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[np.ndarray]]]] = defaultdict(list)
        for index, request in enumerate(requests):
            arrays = [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names]
            groups[tuple(array.shape[1:] for array in arrays)].append((index, arrays))

        for members in groups.values():
            self._respond(members, responses)
        return responses

    def _respond(self, members: list[tuple[int, list[np.ndarray]]], responses: list[Any]) -> None:
        """Run one shape group; if it fails, run its requests one by one so that only the bad one fails."""
        try:
            outputs = self._run(members)
        except Exception as err:  # one bad request must not take the others down
            if len(members) > 1:
                for member in members:
                    self._respond([member], responses)
                return
            # A TritonError of its own per response: Triton 2.51 aborts the server when responses share one.
            error = pb_utils.TritonError(f"onnxruntime: {err}")
            responses[members[0][0]] = pb_utils.InferenceResponse(error=error)
            return
        start = 0
        for index, arrays in members:
            end = start + len(arrays[0])
            tensors = [pb_utils.Tensor(name, out[start:end]) for name, out in zip(self.output_names, outputs)]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            start = end

    def _run(self, members: list[tuple[int, list[np.ndarray]]]) -> list[np.ndarray]:
        if len(members) == 1:
            feed = dict(zip(self.input_names, members[0][1]))
        else:
            feed = {
                name: np.concatenate([arrays[position] for _, arrays in members])
                for position, name in enumerate(self.input_names)
            }
        return self.session.run(self.output_names, feed)
