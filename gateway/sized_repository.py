"""The sized copy of the model repository that tritonserver serves (standard library only).

The assembled repository stays read-only (in the image it is): at start the gateway writes, into a directory of its
own under the temporary directory, one directory per model holding a config.pbtxt with the chosen sizes and a
symbolic link to everything else (model.onnx, the tokenizer, model.py and their version directories), and points
tritonserver at it. Directories left by earlier gateways that no longer run are removed first
(only this user's, only those named for a process that is gone); this gateway's own is removed when it exits.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from .manifest import FILE_NAME as MANIFEST_FILE, repository_of, with_repository
from .sizing import (BUSY_SESSIONS_MEMORY_SHARE, Sizes, SizingError, build_sizing, choose, describe_busy,
                     find_cpus, memory_limit, second_sessions_fit)

log = logging.getLogger("tritoned.sizing")

PREFIX = "tritoned_repository_"
INSTANCES = re.compile(r"(instance_group \[ \{ count: )\d+(, kind: KIND_CPU \} \])")
THREADS = re.compile(r'(key: "intra_op_thread_count" value: \{ string_value: ")\d*(" \})')
BUSY_THREADS = re.compile(r'(key: "busy_intra_op_thread_count" value: \{ string_value: ")\d*(" \})')
DELAY = re.compile(r"(max_queue_delay_microseconds: )\d+")


def _pid_namespace() -> str:
    try:
        return "".join(ch for ch in os.readlink("/proc/self/ns/pid") if ch.isdigit()) or "0"
    except OSError:
        return "0"


def _sub(pattern: re.Pattern[str], value: int, text: str, where: str, required: bool) -> str:
    result, count = pattern.subn(lambda m: f"{m.group(1)}{value}{m.group(2) if m.lastindex == 2 else ''}", text)
    if required and count != 1:
        raise SizingError(f"{where}: expected one line like make_triton_image.sh writes ({pattern.pattern}), found "
                          f"{count}; reassemble the repository with ./make_triton_image.sh")
    return result


def sized_config(model: str, text: str, sizes: Sizes, where: str) -> str:
    """config.pbtxt of `model` with the sizes in place (models other than these two keep their instance counts)."""
    if model == "model_onnx":
        text = _sub(INSTANCES, sizes.model_instances, text, where, True)
        text = _sub(THREADS, sizes.ort_threads, text, where, True)
        text = _sub(BUSY_THREADS, sizes.busy_ort_threads, text, where, False)  # absent from older repositories
    elif model == "text_preprocessing":
        text = _sub(INSTANCES, sizes.preprocessing_instances, text, where, True)
    return _sub(DELAY, sizes.batch_delay_us, text, where, False)


def remove_stale(base: Path) -> None:
    """Remove the sized repositories of gateways that are gone: ours (this user's), in this pid namespace."""
    prefix = f"{PREFIX}{_pid_namespace()}_"
    for entry in base.glob(prefix + "*"):
        pid = entry.name[len(prefix):]
        try:
            stat = entry.lstat()
        except OSError:
            continue
        if not pid.isdigit() or stat.st_uid != os.getuid() or not entry.is_dir() or entry.is_symlink():
            continue
        if Path(f"/proc/{pid}").exists() and int(pid) != os.getpid():
            continue
        shutil.rmtree(entry, ignore_errors=True)  # removes the links, never what they point at
        log.info("removed %s (left by gateway pid %s, which has exited)", entry, pid)


def render(source: Path, sizes: Sizes, base: Path | None = None) -> Path:
    """Write the sized copy of `source` and return its path."""
    base = Path(base or tempfile.gettempdir())
    remove_stale(base)
    target = base / f"{PREFIX}{_pid_namespace()}_{os.getpid()}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(mode=0o700)
    for entry in sorted(source.iterdir()):
        config = entry / "config.pbtxt"
        if not (entry.is_dir() and config.is_file()):
            (target / entry.name).symlink_to(entry.resolve())
            continue
        model_dir = target / entry.name
        model_dir.mkdir()
        for item in sorted(entry.iterdir()):
            if item.name != "config.pbtxt":
                (model_dir / item.name).symlink_to(item.resolve())
        text = config.read_text(encoding="utf-8")
        (model_dir / "config.pbtxt").write_text(sized_config(entry.name, text, sizes, str(config)), encoding="utf-8")
    atexit.register(_remove_if_owner, target, os.getpid())
    return target


def _remove_if_owner(target: Path, owner: int) -> None:
    """At exit: only the process that made it removes it (a forked child inherits the atexit hook)."""
    if os.getpid() == owner:
        shutil.rmtree(target, ignore_errors=True)


def model_size(repository: Path) -> int:
    """Bytes of model_onnx's model files (model.onnx and any external data beside it), links followed."""
    version = repository / "model_onnx" / "1"
    try:
        return sum(entry.stat().st_size for entry in version.iterdir()
                   if entry.is_file() and not entry.name.endswith((".py", ".pyc")))
    except OSError:
        return 0


def within_memory(sizes: Sizes, source: Path, limit: int | None) -> Sizes:
    """`sizes` without the second sessions when their copies of the model would not fit the memory limit `limit`
    (bytes; None: no limit): sizing.second_sessions_fit. Logs the reason."""
    if not sizes.busy_ort_threads:
        return sizes
    model_bytes = model_size(source)
    if second_sessions_fit(sizes, model_bytes, limit):
        return sizes
    log.info("no second ONNX Runtime sessions: %d more copies of the model (%d MiB each) would take more than %d%% of "
             "the memory limit (%d MiB)", sizes.model_instances, model_bytes >> 20,
             round(BUSY_SESSIONS_MEMORY_SHARE * 100), (limit or 0) >> 20)
    return replace(sizes, busy_ort_threads=0)


def sized(tritonserver: list[str]) -> list[str]:
    """The tritonserver command serving a sized copy of its repository, when the repository has a
    manifest tritoned.json (make_triton_image.sh writes one, with the build's sizing); otherwise unchanged. Logs
    what it found and chose; SizingError when the manifest is malformed."""
    source = repository_of(tritonserver)
    report = find_cpus()
    if source is None or not (source / MANIFEST_FILE).is_file():
        log.info("%s; the repository has no %s: served as configured", report.describe(), MANIFEST_FILE)
        return tritonserver
    build = build_sizing(source)
    sizes, how = choose(report, build)
    if build.busy_ort_threads is None or report.override is not None:  # chosen here, not fixed by the build
        sizes = within_memory(sizes, source, memory_limit())
    target = render(source, sizes)
    log.info("%s", report.describe())
    log.info("%s: model_onnx %d instance(s) x %d ONNX Runtime thread(s), %d tokenizer instance(s), batch delay %d us, "
             "%s (sized repository: %s)", how, sizes.model_instances, sizes.ort_threads, sizes.preprocessing_instances,
             sizes.batch_delay_us, describe_busy(sizes), target)
    return with_repository(tritonserver, target)
