"""model_onnx: the classifier model.onnx run by ONNX Runtime, written in Python.

model_onnx is a Python backend model (`backend: "python"`): this file, with the model.onnx that
make_triton_image.sh puts beside it, locally and in every image.

It honours the native backend's config: `default_model_filename` (default model.onnx) and the
parameters `intra_op_thread_count` / `inter_op_thread_count`. Requests that arrive together (dynamic
batching, with `allow_ragged_batch` on the inputs: requests of any lengths) are run together, which the native
backend cannot do: every text is cut to its attention mask's length, the texts are sorted by length and run in
buckets of similar lengths, each padded to its longest; so are the texts of one request of several (text_preprocessing
pads a request to its longest text). A lone text runs as it came, and so does every request of a model without
dynamic batching (a dynamically quantized one: its answers would depend on the neighbours in a run). If a run
fails, the requests are run one by one, so only the request that caused the failure gets an error.

Threads follow the load: the instances of the model together have more threads than CPUs (a lone text runs on all
the CPUs: `intra_op_thread_count`), so with `busy_intra_op_thread_count` > 0 each instance also holds a second
session with that many threads, the one it runs under load (`runs_wide`): while another instance is busy
(BusyBoard), or when Triton hands it the requests of several clients at once. Under load the instances together
keep about one thread per CPU instead of waking more threads than there are CPUs, which costs CPU time per text
(docs/sizing.md). Both sessions load the same model.onnx: the answers do not depend on which runs.

Spinning: the wide session of an instance that has both runs only while the other instances are idle, so its
threads spin between the steps of a run (a sleeping thread takes tens of microseconds to wake, many times per run)
and stop spinning when the run ends (ONNX Runtime's session.force_spinning_stop), leaving the CPUs to the
tokenizer, the post-processing and the other instances. The busy session, and the one session of an instance
without a second, never spin: under load a spinning thread takes a CPU that another process needs.
The config parameter `intra_op_allow_spinning` ("0" or "1") overrides this for every session.
"""
from __future__ import annotations

import json
import mmap
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

DEFAULT_MODEL_FILENAME = "model.onnx"
# Beside the model's config in the served (sized) repository: one byte per instance, 1 while it runs.
BUSY_BOARD_FILE = ".busy_instances"
BUSY_BOARD_SLOTS = 4096
MASK = "attention_mask"
# A bucket of texts is padded to its longest: a text this much longer than the bucket's shortest
# (x BUCKET_GROWTH + BUCKET_SLACK tokens) starts a new one (one more run costs less than that much padding).
# Measured on short support texts, 16 at a time, one thread (CPU per text against one text per run): MiniLM-L6
# 0.87-0.92x with these, 0.93-0.96x with 1.5 x + 8; rubert-tiny2's shape 0.95-1.0x, 1.13-1.18x with 1.5 x + 8.
BUCKET_GROWTH = 1.2
BUCKET_SLACK = 2


@dataclass(frozen=True)
class Row:
    order: int  # position among all the texts of the call, in request order
    length: int  # up to and including the last token the attention mask keeps
    values: tuple[np.ndarray, ...]  # one 1-D array per input, cut to length


def ragged_rows(members: list[tuple[int, list[np.ndarray]]], mask_position: int) -> list[Row]:
    """Every text of every request, cut to its attention mask's length, sorted by length (stable)."""
    rows = []
    for _, arrays in members:
        shapes = {array.shape for array in arrays}
        if len(shapes) != 1 or arrays[0].ndim != 2:
            raise ValueError(f"inputs of one request must share one [batch, length] shape, got {sorted(shapes)}")
        mask = arrays[mask_position]
        kept = mask != 0
        lengths = np.where(kept.any(axis=1), mask.shape[1] - np.argmax(kept[:, ::-1], axis=1), 1)
        for row, length in enumerate(lengths):
            rows.append(Row(len(rows), int(length), tuple(array[row, :length] for array in arrays)))
    return sorted(rows, key=lambda row: row.length)


def pad_values(members: list[tuple[int, list[np.ndarray]]], mask_position: int, count: int) -> list[int]:
    """Per input, the value it already pads with (the tokenizer's pad id for input_ids), 0 where none is seen."""
    pads = [0] * count
    for _, arrays in members:
        padded = arrays[mask_position] == 0
        if padded.any():
            return [int(array[padded][0]) if position != mask_position else 0 for position, array in enumerate(arrays)]
    return pads


def buckets(lengths: list[int]) -> list[list[int]]:
    """Indices of the (sorted) lengths in runs of similar length."""
    groups: list[list[int]] = []
    for index, length in enumerate(lengths):
        if groups and length <= lengths[groups[-1][0]] * BUCKET_GROWTH + BUCKET_SLACK:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def pad_bucket(rows: list[Row], position: int, pad: int) -> np.ndarray:
    longest = max(row.length for row in rows)
    first = rows[0].values[position]
    out = np.full((len(rows), longest), pad, dtype=first.dtype)
    for line, row in enumerate(rows):
        out[line, :row.length] = row.values[position]
    return out


def int_parameter(config: dict[str, Any], key: str, default: int) -> int:
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return int(value) if value.strip() else default


class BusyBoard:
    """Which instances of this model are running a batch: one byte per instance in a small file that all of them map
    (a byte is written only by its instance; a stale read only picks the other session, never another answer).
    Without a writable place (a repository served as it is, read-only) every instance counts as idle."""

    def __init__(self, directory: str, instance_name: str) -> None:
        self.index = instance_index(instance_name) % BUSY_BOARD_SLOTS
        self.map: mmap.mmap | None = None
        try:
            fd = os.open(os.path.join(directory, BUSY_BOARD_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return
        try:
            if os.fstat(fd).st_size < BUSY_BOARD_SLOTS:
                os.ftruncate(fd, BUSY_BOARD_SLOTS)
            self.map = mmap.mmap(fd, BUSY_BOARD_SLOTS)
        except OSError:
            self.map = None
        finally:
            os.close(fd)
        self.set(False)  # a previous process of this instance may have died while busy

    def others_busy(self) -> bool:
        if self.map is None:
            return False
        own = self.index
        return self.map.find(b"\x01", 0, own) != -1 or self.map.find(b"\x01", own + 1) != -1

    def set(self, busy: bool) -> None:
        if self.map is not None:
            self.map[self.index] = 1 if busy else 0


def runs_wide(requests: int, others_busy: bool) -> bool:
    """Whether an instance with two sessions runs this call on the wide one: a lone client's request while the other
    instances are idle. Several requests in one call are load: on the wide session (its threads spinning) the next
    instance to start would find fewer CPUs than threads (measured on 2 CPUs, 16 in flight: model_onnx's CPU per
    text 8.0-8.2 ms against 8.5-8.6 with the wide session for them)."""
    return requests == 1 and not others_busy


def instance_index(instance_name: str) -> int:
    """The instance's number within its group: Triton names them <model>_<group>_<index> (model_onnx_0_1)."""
    tail = instance_name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def session_options(config: dict[str, Any], threads_key: str, spinning: bool) -> ort.SessionOptions:
    """`spinning`: the default of this session (see the module's docstring); the config's intra_op_allow_spinning
    wins. A spinning session's threads stop spinning at the end of every run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int_parameter(config, threads_key, 0)
    options.inter_op_num_threads = int_parameter(config, "inter_op_thread_count", 0)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = int_parameter(config, "intra_op_allow_spinning", int(spinning))
    options.add_session_config_entry("session.intra_op.allow_spinning", str(spin))
    if spin:
        options.add_session_config_entry("session.force_spinning_stop", "1")
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
        if filename.endswith(".py"):  # the Python backend may name this file (model.py); the model lies beside it
            filename = DEFAULT_MODEL_FILENAME
        # The real file (the gateway serves a sized copy of the repository whose version directories are links):
        # errors name the file the user has.
        path = os.path.realpath(os.path.join(args["model_repository"], args["model_version"], filename))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model file not found: {path}")
        busy_threads = int_parameter(config, "busy_intra_op_thread_count", 0)
        two_sessions = 0 < busy_threads < int_parameter(config, "intra_op_thread_count", 0)
        # Only the wide session of two spins (module docstring). Without force_spinning_stop a spinning thread kept
        # a CPU for milliseconds after its run: a lone text's p50 went 10 -> 17 ms on 2 CPUs. With it, 8.68 -> 6.17
        # ms against --no-ort-spinning (docs/sizing.md).
        self.session = ort.InferenceSession(path, session_options(config, "intra_op_thread_count", two_sessions),
                                            providers=["CPUExecutionProvider"])
        check_io(self.session, config, path)
        self.busy_session = None  # None: self.session always
        self.board = None
        if two_sessions:
            self.busy_session = ort.InferenceSession(
                path, session_options(config, "busy_intra_op_thread_count", False), providers=["CPUExecutionProvider"])
            self.board = BusyBoard(args["model_repository"], args.get("model_instance_name", ""))
        self.batching = "dynamic_batching" in config  # requests of several clients may share a run
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.mask_position = self.input_names.index(MASK) if MASK in self.input_names else None

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.board is None:
            return self._execute(requests, self.session)
        session = self.session if runs_wide(len(requests), self.board.others_busy()) else self.busy_session
        self.board.set(True)
        try:
            return self._execute(requests, session)
        finally:
            self.board.set(False)

    def _execute(self, requests: list[Any], session: ort.InferenceSession) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        members = []
        for index, request in enumerate(requests):
            arrays = [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names]
            members.append((index, arrays))
        lone_text = len(members) == 1 and len(members[0][1][0]) == 1  # one request of one row
        if self.mask_position is None or not self.batching or lone_text:
            # One text, or a model without dynamic batching (a quantized one: its requests run as they came): run
            # it as it came. Several without an attention mask: only requests of one shape can share a run.
            groups: dict[tuple, list[tuple[int, list[np.ndarray]]]] = defaultdict(list)
            for member in members:
                groups[tuple(array.shape[1:] for array in member[1])].append(member)
            for group in groups.values():
                self._respond(group, responses, session)
            return responses
        self._respond_ragged(members, responses, session)
        return responses

    def _respond_ragged(self, members: list[tuple[int, list[np.ndarray]]], responses: list[Any],
                        session: ort.InferenceSession) -> None:
        """Requests of any lengths (allow_ragged_batch): every text is cut to its attention mask's length, the texts
        sorted by length and run in buckets of similar lengths, each padded to its longest (padding is masked out:
        a text's logits do not depend on its bucket beyond float rounding)."""
        try:
            rows = ragged_rows(members, self.mask_position)
            pads = pad_values(members, self.mask_position, len(self.input_names))
            results = []  # per bucket; the buckets are consecutive runs of the sorted texts
            for bucket in buckets([row.length for row in rows]):
                feed = {name: pad_bucket([rows[i] for i in bucket], position, pads[position])
                        for position, name in enumerate(self.input_names)}
                results.append(session.run(self.output_names, feed))
            outputs = [np.concatenate(parts) for parts in zip(*results)]
        except Exception:  # one bad request must not take the others down: each runs alone
            for member in members:
                self._respond([member], responses, session)
            return
        order = np.argsort([row.order for row in rows], kind="stable")
        start = 0
        for index, arrays in members:
            end = start + len(arrays[0])
            picked = order[start:end]
            tensors = [pb_utils.Tensor(name, output[picked]) for name, output in zip(self.output_names, outputs)]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
            start = end

    def _respond(self, members: list[tuple[int, list[np.ndarray]]], responses: list[Any],
                 session: ort.InferenceSession) -> None:
        """Run one shape group; if it fails, run its requests one by one so that only the bad one fails."""
        try:
            outputs = self._run(members, session)
        except Exception as err:  # one bad request must not take the others down
            if len(members) > 1:
                for member in members:
                    self._respond([member], responses, session)
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

    def _run(self, members: list[tuple[int, list[np.ndarray]]], session: ort.InferenceSession) -> list[np.ndarray]:
        if len(members) == 1:
            feed = dict(zip(self.input_names, members[0][1]))
        else:
            feed = {
                name: np.concatenate([arrays[position] for _, arrays in members])
                for position, name in enumerate(self.input_names)
            }
        return session.run(self.output_names, feed)
