#!/usr/bin/env python3
"""Check a wheelhouse (make_triton_image.sh --wheelhouse DIR) against the Python of the image's base before the
image is built: every wheel in DIR must install on that Python and platform, and every requirement pinned in
requirements-serving.txt must have such a wheel. Otherwise pip would stop the docker build with "Could not find a
version that satisfies the requirement ...", which does not say why.

On a problem: one message naming the wheels and requirements that do not fit and the exact pip download command
that fills DIR for this base; exit status 2. Reads file names only (the wheel tags), never the wheels.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

MANYLINUX = re.compile(r"^manylinux_2_(\d+)_x86_64$")
LEGACY = ("manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")  # glibc 2.17, 2.12, 2.5
# Besides the base's own platform, the --platform values of the download command: pip does not widen a
# manylinux_2_X platform to older ones, so the common tags are named one by one.
DOWNLOAD_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                      "manylinux2014_x86_64")
PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)")


@dataclass(frozen=True)
class Target:
    python: str  # "3.12"
    platform: str  # the newest manylinux platform of the base, e.g. manylinux_2_39_x86_64

    def platforms(self) -> list[str]:
        """Every platform tag a wheel may carry to install there: manylinux_2_X for X up to the base's glibc."""
        glibc = int(MANYLINUX.match(self.platform).group(1))
        return [f"manylinux_2_{minor}_x86_64" for minor in range(glibc, 4, -1)] + list(LEGACY)

    def tags(self) -> set[Tag]:
        version = tuple(int(part) for part in self.python.split("."))
        platforms = self.platforms()
        return set(cpython_tags(version, platforms=platforms)) | set(
            compatible_tags(version, interpreter=f"cp{version[0]}{version[1]}", platforms=platforms))


def pinned(requirements: Path) -> list[tuple[str, str, str]]:
    """(canonical name, version, the line) of each `name==version` line."""
    found = []
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = PINNED.match(line.strip())
        if match:
            found.append((canonicalize_name(match.group(1)), match.group(3), line.strip()))
    return found


def download_arguments(target: Target, requirements: Path, wheelhouse: Path) -> list[str]:
    """The arguments of `pip download` that fill `wheelhouse` for the base (what docs/image.md shows)."""
    platforms = [target.platform, *(p for p in DOWNLOAD_PLATFORMS if p != target.platform)]
    return ["-r", str(requirements), "-d", str(wheelhouse), "--only-binary=:all:", "--python-version", target.python,
            *(word for p in platforms for word in ("--platform", p))]


def download_command(target: Target, requirements: Path, wheelhouse: Path) -> str:
    return shlex.join(["pip", "download", *download_arguments(target, requirements, wheelhouse)])


def problems(wheelhouse: Path, target: Target, requirements: Path) -> list[str]:
    supported = target.tags()
    fitting: set[tuple[str, str]] = set()
    foreign = []
    for wheel in sorted(wheelhouse.glob("*.whl")):
        try:
            name, version, _, tags = parse_wheel_filename(wheel.name)
        except InvalidWheelFilename:
            foreign.append(f"{wheel.name} (not a wheel's file name)")
            continue
        if tags & supported:
            fitting.add((name, str(version)))
        else:
            foreign.append(f"{wheel.name} ({', '.join(sorted({tag.interpreter for tag in tags}))})")
    if not fitting and not foreign:
        return ["it holds no .whl files"]
    found = []
    if foreign:
        found.append(f"{len(foreign)} wheel(s) cannot install there: {'; '.join(foreign[:6])}"
                     + (f"; and {len(foreign) - 6} more" if len(foreign) > 6 else ""))
    missing = [line for name, version, line in pinned(requirements) if (name, version) not in fitting]
    if missing:
        found.append(f"no wheel there fits {', '.join(missing)} (from {requirements.name})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheelhouse", type=Path, help="the directory of .whl files")
    parser.add_argument("--python-version", required=True, metavar="X.Y", help="the Python of the base image")
    parser.add_argument("--platform", required=True, metavar="manylinux_2_X_x86_64",
                        help="the newest manylinux platform the base runs (its glibc)")
    parser.add_argument("--requirements", type=Path, required=True, help="requirements-serving.txt")
    parser.add_argument("--base", default="the base image", help="how to name the base in the message")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version) or not MANYLINUX.match(args.platform):
        parser.error("--python-version must be 3.X and --platform manylinux_2_X_x86_64")
    target = Target(args.python_version, args.platform)
    found = problems(args.wheelhouse, target, args.requirements)
    if found:
        print(f"--wheelhouse {args.wheelhouse} does not fit {args.base}, whose Python is {target.python} "
              f"({target.platform}): {'; '.join(found)}. Fill it for Python {target.python} (an empty directory, or "
              f"remove the other wheels first):\n  {download_command(target, args.requirements, args.wheelhouse)}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
