"""make_triton_image.sh's Triton release: the default has the upstream fixes; an older release is built when asked
for, with a warning that names its known defects (README: Безопасность / Security)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_image


@pytest.mark.parametrize("release, defects", [
    ("24.10", ["CVE-2025-23319", "SIGFPE", "gzip/deflate", "deeply nested request JSON", "readiness at 200"]),
    ("25.07", ["gzip/deflate", "deeply nested request JSON"]),
    ("26.04", ["deeply nested request JSON"]),
])
def test_an_older_release_is_built_with_a_warning_naming_its_defects(tiny_artifacts, tmp_path: Path, release: str,
                                                                     defects: list[str]) -> None:
    result = make_image(tiny_artifacts("bert"), tmp_path / "build", "--no-build", "--triton-release", release)
    assert result.returncode == 0, result.stderr
    assert f"WARNING: Triton release {release} has known defects" in result.stderr, result.stderr
    for defect in defects:
        assert defect in result.stderr, (defect, result.stderr)
    if release != "24.10":
        assert "CVE-2025-23319" not in result.stderr


def test_the_default_release_has_no_known_defect(tiny_artifacts, tmp_path: Path) -> None:
    result = make_image(tiny_artifacts("bert"), tmp_path / "build", "--no-build")
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    help_text = make_image(tiny_artifacts("bert"), tmp_path / "help", "--help").stdout
    assert "(default: 26.07)" in help_text, help_text
