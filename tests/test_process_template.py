"""process_template.sh: only the project's variables are substituted; unset ones are an error."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import ROOT

SCRIPT = str(ROOT / "process_template.sh")


def render(directory: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "MAX_BATCH_SIZE", "NUM_LABELS")}
    return subprocess.run([SCRIPT, str(directory)], capture_output=True, text=True, env={**clean, **env})


def test_renders_project_variables_and_keeps_other_dollar_text(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    template = tmp_path / "sub" / "config.pbtxt.template"
    template.write_text('name: "${MODEL_NAME}" batch: $MAX_BATCH_SIZE home: ${HOME} cost: $5 $1 ${UNKNOWN}\n')
    result = render(tmp_path, MODEL_NAME="intents", MAX_BATCH_SIZE="8")
    assert result.returncode == 0, result.stderr
    rendered = (tmp_path / "sub" / "config.pbtxt").read_text()
    assert rendered == 'name: "intents" batch: 8 home: ${HOME} cost: $5 $1 ${UNKNOWN}\n'
    assert not template.exists()


def test_unset_variable_is_an_error_and_renders_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.template").write_text("${MODEL_NAME}\n")
    (tmp_path / "b.template").write_text("${NUM_LABELS}\n")
    result = render(tmp_path, MODEL_NAME="x")
    assert result.returncode != 0
    assert "NUM_LABELS" in result.stderr and "unset" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.template", "b.template"]


def test_set_but_empty_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "a.template").write_text("[${NUM_LABELS}]\n")
    result = render(tmp_path, NUM_LABELS="")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a").read_text() == "[]\n"


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    result = render(tmp_path / "nope")
    assert result.returncode != 0 and "not a directory" in result.stderr


def test_template_uses_only_known_variables() -> None:
    """Every ${VAR} in the shipped template is one process_template.sh substitutes."""
    import re

    script = (ROOT / "process_template.sh").read_text()
    known = set(re.search(r"TEMPLATE_VARS=\((.*?)\)", script, re.S).group(1).split())
    used = set()
    for template in (ROOT / "model_repository").rglob("*.template"):
        used |= set(re.findall(r"\$\{([A-Z_]+)\}", template.read_text()))
    assert used and used <= known, used - known
