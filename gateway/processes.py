"""Triton's backend processes from /proc: each Python backend stub (one per model instance) is a child of
tritonserver whose command line names its instance (`<model>_<group>_<index>`) and its shared-memory region."""
from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

PROC = Path("/proc")
STUB_COMMAND = "triton_python_backend_stub"
_INSTANCE = re.compile(r"^(.+)_(\d+)_(\d+)$")


@dataclass(frozen=True)
class Stub:
    pid: int
    start_time: int  # /proc start time: a reused pid is another process
    instance: str
    model: str
    shm_region: str  # the region in /dev/shm it was given (left behind when it is killed)


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, None once it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def alive(stub: Stub) -> bool:
    """The same process still runs (not gone, not a zombie, pid not reused)."""
    stat = _stat(stub.pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[2] == stub.start_time


def _stub_of(pid: int, known: frozenset[str]) -> Stub | None:
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    args = [arg.decode(errors="replace") for arg in argv if arg]
    if not args or not args[0].endswith(STUB_COMMAND):
        return None
    for arg in reversed(args[1:]):
        match = _INSTANCE.match(arg)
        if match and match.group(1) in known:
            stat = _stat(pid)
            if stat is None:
                return None
            return Stub(pid=pid, start_time=stat[2], instance=arg, model=match.group(1),
                        shm_region=args[2] if len(args) > 2 else "")
    return None


def stubs(server_pid: int, models: Iterable[str]) -> list[Stub]:
    """The live backend stubs of tritonserver `server_pid` for the given model names."""
    known = frozenset(models)
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[1] != server_pid or stat[0] in ("Z", "X"):
            continue
        stub = _stub_of(int(entry.name), known)
        if stub is not None:
            found.append(stub)
    return sorted(found, key=lambda s: s.instance)


def kill(stub: Stub) -> None:
    """SIGKILL a stub, if it is still the same process."""
    if alive(stub):
        try:
            os.kill(stub.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def remove_shm_region(stub: Stub) -> bool:
    """Remove the /dev/shm region of a dead stub (Triton leaves it behind); True when one was removed."""
    if not stub.shm_region or "/" in stub.shm_region or alive(stub):
        return False
    path = Path("/dev/shm") / stub.shm_region
    try:
        path.unlink()
        return True
    except OSError:
        return False
