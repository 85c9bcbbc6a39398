"""model_repository/model_onnx/1/model.py pads the texts of different requests together (allow_ragged_batch):
each text's logits must be those of the text run alone, however much padding its bucket adds (the attention mask is
honoured), for every tiny architecture (BERT, DistilBERT without token_type_ids, RoBERTa and XLM-R whose pad id is 1)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

TEXTS = ["hi", "where is my order", "помогите мне пожалуйста, заказ не пришёл уже третью неделю " * 3,
         "I want a refund for this item", "спасибо 🙂"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def backend():
    import pytriton

    sys.path.insert(0, str(Path(pytriton.__file__).parent / "tritonserver" / "backends" / "python"))
    path = ROOT / "model_repository" / "model_onnx" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("tritoned_ort_backend", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
def test_a_text_padded_in_a_bucket_answers_as_alone(backend, tiny_artifacts, kind: str) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    artifacts = tiny_artifacts(kind)
    session = ort.InferenceSession(str(artifacts.model), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    tokenizer = Tokenizer.from_file(str(artifacts.tokenizer / "tokenizer.json"))
    tokenizer.enable_truncation(64)
    pad_id = tokenizer.token_to_id("<pad>") if tokenizer.token_to_id("<pad>") is not None else 0
    tokenizer.enable_padding(pad_id=pad_id)

    def arrays(encodings) -> list[np.ndarray]:
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        return [np.array([getattr(e, fields[name]) for e in encodings], dtype=np.int64) for name in names]

    alone = [session.run(None, dict(zip(names, arrays([tokenizer.encode(t)]))))[0][0] for t in TEXTS]
    # Two "requests", each padded to its own longest text as text_preprocessing does, then every text of both
    # padded together to the longest of all (one bucket: the most padding a text can get).
    members = [(0, arrays(tokenizer.encode_batch(TEXTS[:2]))), (1, arrays(tokenizer.encode_batch(TEXTS[2:])))]
    mask = names.index("attention_mask")
    rows = backend.ragged_rows(members, mask)
    assert [row.length for row in rows] == sorted(row.length for row in rows)
    pads = backend.pad_values(members, mask, len(names))
    assert pads[names.index("input_ids")] == pad_id
    feed = {name: backend.pad_bucket(rows, position, pads[position]) for position, name in enumerate(names)}
    assert feed["attention_mask"].shape[1] > min(row.length for row in rows) * 3  # real padding
    logits = session.run(None, feed)[0]
    for row, result in zip(rows, logits):
        np.testing.assert_allclose(result, alone[row.order], atol=TOLERANCE)


def test_buckets_keep_short_texts_apart_from_long_ones(backend) -> None:
    lengths = [3, 4, 5, 9, 20, 21, 24, 25, 60, 128]
    groups = backend.buckets(lengths)
    assert [i for group in groups for i in group] == list(range(len(lengths)))
    # Similar lengths share a run; none is padded to more than BUCKET_GROWTH x its length + BUCKET_SLACK tokens.
    assert groups[0] == [0, 1, 2] and [4, 5, 6, 7] in groups and [9] in groups
    for group in groups:
        assert lengths[group[-1]] <= lengths[group[0]] * backend.BUCKET_GROWTH + backend.BUCKET_SLACK


@pytest.mark.parametrize("threads, busy_threads, wide_spins", [(2, 1, "1"), (2, 0, "0"), (1, 0, "0"), (4, 2, "1")])
def test_only_the_wide_session_of_two_spins_and_it_stops_at_the_end_of_a_run(
        backend, tiny_artifacts, tmp_path: Path, threads: int, busy_threads: int, wide_spins: str) -> None:
    """The session a lone text runs on (the wide one, beside a busy one) spins between the steps of its run and
    stops when the run ends; a busy session, or an instance's only session, never spins."""
    artifacts = tiny_artifacts("bert")
    version = tmp_path / "1"
    version.mkdir()
    (version / "model.onnx").symlink_to(artifacts.model)
    config = {"input": [{"name": n} for n in ("input_ids", "attention_mask", "token_type_ids")],
              "output": [{"name": "logits"}],
              "parameters": {"intra_op_thread_count": {"string_value": str(threads)},
                             "busy_intra_op_thread_count": {"string_value": str(busy_threads)}}}
    model = backend.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1",
                      "model_instance_name": "model_onnx_0_0"})

    def spins(session) -> tuple[str, str]:
        """(allow_spinning, force_spinning_stop), "" for an entry not set."""
        options = session.get_session_options()
        entries = []
        for key in ("session.intra_op.allow_spinning", "session.force_spinning_stop"):
            try:
                entries.append(options.get_session_config_entry(key))
            except RuntimeError:  # not set
                entries.append("")
        return entries[0], entries[1]

    assert spins(model.session) == ((wide_spins, "1") if wide_spins == "1" else ("0", ""))
    assert (model.busy_session is not None) == (wide_spins == "1")
    if model.busy_session is not None:
        assert spins(model.busy_session) == ("0", "")
    # The config's intra_op_allow_spinning wins for every session.
    config["parameters"]["intra_op_allow_spinning"] = {"string_value": "0"}
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1",
                      "model_instance_name": "model_onnx_0_0"})
    assert spins(model.session)[0] == "0"


def test_a_request_whose_inputs_disagree_is_refused(backend) -> None:
    ok = [np.ones((1, 4), np.int64), np.ones((1, 4), np.int64)]
    bad = [np.ones((1, 4), np.int64), np.ones((1, 5), np.int64)]
    with pytest.raises(ValueError, match="share one"):
        backend.ragged_rows([(0, ok), (1, bad)], 1)


def test_the_busy_board_tells_an_instance_when_another_is_busy(backend, tmp_path: Path) -> None:
    """Two instances of model_onnx share one board in the model's (sized, writable) directory: each sees the other's
    run, never its own; a restarted instance clears its own slot; without a writable directory every instance counts
    as idle (the one session with all the threads)."""
    first = backend.BusyBoard(str(tmp_path), "model_onnx_0_0")
    second = backend.BusyBoard(str(tmp_path), "model_onnx_0_1")
    assert not first.others_busy() and not second.others_busy()
    first.set(True)
    assert second.others_busy() and not first.others_busy()
    second.set(True)
    assert first.others_busy()
    again = backend.BusyBoard(str(tmp_path), "model_onnx_0_1")  # the instance's process restarted mid-run
    assert not first.others_busy() and again.others_busy()
    first.set(False)
    assert not again.others_busy()
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o500)
    if os.access(read_only, os.W_OK):  # root writes anywhere: a directory that does not exist stands in
        read_only = tmp_path / "missing"
    lone = backend.BusyBoard(str(read_only), "model_onnx_0_0")
    lone.set(True)
    assert not lone.others_busy() and lone.map is None


@pytest.mark.parametrize("requests, others_busy, wide", [(1, False, True), (1, True, False), (2, False, False),
                                                          (16, True, False)])
def test_only_a_lone_request_of_an_idle_server_runs_wide(backend, requests: int, others_busy: bool,
                                                          wide: bool) -> None:
    """The wide session (all the threads, spinning) is for a lone client: another instance busy, or several requests
    handed over at once (load), get the busy session."""
    assert backend.runs_wide(requests, others_busy) is wide


@pytest.mark.parametrize("name, index", [("model_onnx_0_0", 0), ("model_onnx_0_7", 7), ("weird", 0), ("", 0)])
def test_instance_index_from_the_name_triton_gives(backend, name: str, index: int) -> None:
    assert backend.instance_index(name) == index
