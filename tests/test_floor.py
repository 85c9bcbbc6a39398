"""bench/floor.py: the floor's repository is the assembled one with the three model.py files replaced by stand-ins
(which the real server runs in tests/test_process_cost.py); the original is left as it was, and a directory that is
not an assembled repository is refused with a message that names what is missing."""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))  # the bench package

from bench.floor import MODELS, FloorError, floor_repository  # noqa: E402


def assembled(tmp_path):
    repository = tmp_path / "model_repository"
    for model in MODELS:
        (repository / model / "1").mkdir(parents=True)
        (repository / model / "1" / "model.py").write_text(f"# the real {model}\n", encoding="utf-8")
        (repository / model / "config.pbtxt").write_text(f'name: "{model}"\n', encoding="utf-8")
    (repository / "post_processing" / "labels.txt").write_text("help_request\nspam\n", encoding="utf-8")
    (repository / "tritoned.json").write_text("{}", encoding="utf-8")
    return repository


def test_stand_ins_replace_the_models_and_nothing_else(tmp_path) -> None:
    repository = assembled(tmp_path)
    floor = floor_repository(repository, tmp_path / "floor", 0.0025)
    for model in MODELS:
        source = (floor / model / "1" / "model.py").read_text(encoding="utf-8")
        assert "stand-in" in source and "the real" not in source, model
        compile(source, model, "exec")  # the formatted source is Python
        assert (floor / model / "config.pbtxt").read_text() == (repository / model / "config.pbtxt").read_text()
        assert (repository / model / "1" / "model.py").read_text() == f"# the real {model}\n"  # untouched
    assert "SECONDS_PER_TEXT = 0.0025" in (floor / "model_onnx" / "1" / "model.py").read_text()
    assert "LABEL = 'help_request'" in (floor / "post_processing" / "1" / "model.py").read_text()
    assert (floor / "tritoned.json").is_file()
    again = floor_repository(repository, floor, 0.001)  # an earlier floor is replaced
    assert "SECONDS_PER_TEXT = 0.001" in (again / "model_onnx" / "1" / "model.py").read_text()


def test_refuses_what_is_not_an_assembled_repository(tmp_path) -> None:
    repository = assembled(tmp_path)
    (repository / "model_onnx" / "1" / "model.py").unlink()
    with pytest.raises(FloorError, match="model_onnx/1/model.py is missing: not an assembled repository"):
        floor_repository(repository, tmp_path / "floor", 0.001)
    assert not (tmp_path / "floor").exists()
    with pytest.raises(FloorError, match="must be >= 0"):
        floor_repository(assembled(tmp_path / "other"), tmp_path / "floor", -1.0)
