"""How many CPUs the server may use, and how the model repository is sized for them (standard library only).

The CPUs: the smallest of the cgroup v2 quota (cpu.max), the cgroup v1 CFS quota (cpu.cfs_quota_us /
cpu.cfs_period_us), each read for this process's cgroup and its ancestors, and the CPUs this process may run on
(sched_getaffinity). A fractional quota counts a core from 0.75 of one up (2.8 -> 3, 2.5 -> 2; never below 1): a
thread beyond the quota is throttled for the rest of each CFS period. TRITONED_CPUS (serve_local.sh --cpus,
docker run -e TRITONED_CPUS=N) overrides what is found.

The sizes (policy()): model instances, ONNX Runtime intra-op threads per instance, tokenizer instances and the
dynamic batchers' delay. The member `sizing` of the repository's manifest tritoned.json (written by
make_triton_image.sh, read by gateway/manifest.py) says which of them the build fixed; the others are "auto" and come
from the CPUs. TRITONED_CPUS overrides the build's numbers too.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping

from . import manifest
from .manifest import BuildSizing

log = logging.getLogger("tritoned.sizing")

CPUS_ENV = "TRITONED_CPUS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# A fraction of a CPU from this much up counts as a whole one.
ROUND_UP_FROM = 0.75
# One ONNX Runtime session scales well up to about this many threads for a batch of short texts; beyond it a second
# instance (process) serves more texts per second than more threads in one.
MAX_THREADS_PER_SESSION = 8
# Two instances: one computes while the other is between runs (docs/sizing.md).
MIN_MODEL_INSTANCES = 2
# One tokenizer instance keeps up with this many cores of model work (a short text: ~0.4 ms of tokenizer CPU
# against 3-14 ms of model CPU).
CPUS_PER_TOKENIZER = 8
# The second sessions of the model_onnx instances (Sizes.busy_ort_threads) hold one more copy of the model's weights
# each: they are left out when those copies would take more than this share of the memory limit (a large model in a
# small pod); the instances then run with their one session, all threads, busy or not.
BUSY_SESSIONS_MEMORY_SHARE = 0.25
UNLIMITED = 1 << 60  # a cgroup v1 memory limit this large means none


class SizingError(ValueError):
    """A bad TRITONED_CPUS or sizing in tritoned.json: the message names it and the fix."""


@dataclass(frozen=True)
class Finding:
    """One source of a CPU limit: its name, the limit it sets (None: no limit) and what was read."""
    source: str
    cpus: float | None
    detail: str


@dataclass(frozen=True)
class CpuReport:
    findings: tuple[Finding, ...]
    override: int | None = None

    @property
    def found(self) -> int:
        """The CPUs the sources allow (the smallest limit, rounded; at least 1)."""
        limits = [f.cpus for f in self.findings if f.cpus is not None]
        return round_cpus(min(limits)) if limits else 1

    @property
    def cpus(self) -> int:
        return self.override if self.override is not None else self.found

    def describe(self) -> str:
        parts = [f"{f.source}: {f.detail}" for f in self.findings]
        text = f"CPUs found: {self.found} ({'; '.join(parts)})"
        if self.override is not None:
            text += f"; {CPUS_ENV}={self.override} overrides it"
        return text


def round_cpus(cpus: float) -> int:
    whole = math.floor(cpus)
    if cpus - whole >= ROUND_UP_FROM:
        whole += 1
    return max(1, whole)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_paths(proc_self_cgroup: Path, controller: str = "cpu") -> tuple[str | None, str | None]:
    """(the v2 path, the v1 `controller`'s path) of this process, from /proc/self/cgroup."""
    v2 = v1 = None
    for line in (_read(proc_self_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif controller in controllers.split(","):
            v1 = path
    return v2, v1


def _v2_root(root: Path) -> Path:
    """Where the v2 hierarchy is mounted: `root`, or root/unified in the hybrid layout (v1 controllers at the root)."""
    if not (root / "cgroup.controllers").is_file() and (root / "unified").is_dir():
        return root / "unified"
    return root


def _candidates(base: Path, path: str | None) -> list[Path]:
    """base/path and its ancestors up to base; base itself when path is unknown or not mounted there (a container
    sees its own cgroup at the mount's root while /proc/self/cgroup may show the host's path)."""
    found: list[Path] = []
    if path:
        current = base / path.strip("/")
        if current.is_dir():
            while True:
                found.append(current)
                if current == base or base not in current.parents:
                    break
                current = current.parent
    if not found:
        found.append(base)
    return found


def cgroup_v2_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> Finding:
    path, _ = _cgroup_paths(proc_self_cgroup)
    root = _v2_root(root)
    limits: list[tuple[float, Path, str]] = []
    for directory in _candidates(root, path):
        text = _read(directory / "cpu.max")
        if text is None:
            continue
        fields = text.split()
        if len(fields) == 2 and fields[0] != "max":
            try:
                quota, period = int(fields[0]), int(fields[1])
            except ValueError:
                continue
            if quota > 0 and period > 0:
                limits.append((quota / period, directory, text))
    if not limits:
        return Finding("cgroup v2 cpu.max", None, "no quota")
    cpus, directory, text = min(limits)
    return Finding("cgroup v2 cpu.max", cpus, f"{cpus:g} ('{text}' in {directory / 'cpu.max'})")


def cgroup_v1_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> Finding:
    _, path = _cgroup_paths(proc_self_cgroup)
    limits: list[tuple[float, Path, str]] = []
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / mount
        if not base.is_dir():
            continue
        for directory in _candidates(base, path):
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            try:
                quota_us, period_us = int(quota or ""), int(period or "")
            except ValueError:
                continue
            if quota_us > 0 and period_us > 0:
                limits.append((quota_us / period_us, directory, f"{quota_us}/{period_us}"))
        break
    if not limits:
        return Finding("cgroup v1 cfs quota", None, "no quota")
    cpus, directory, text = min(limits)
    return Finding("cgroup v1 cfs quota", cpus, f"{cpus:g} ({text} us in {directory})")


def affinity_limit(affinity: set[int] | None = None) -> Finding:
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            count = os.cpu_count() or 1
            return Finding("cpu count", float(count), str(count))
    return Finding("sched_getaffinity", float(len(affinity)), f"{len(affinity)} CPU(s)")


def parse_override(environ: Mapping[str, str]) -> int | None:
    value = environ.get(CPUS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise SizingError(f"{CPUS_ENV}={value!r} is not a whole number of CPUs >= 1 (e.g. {CPUS_ENV}=4; unset it to "
                          f"size from the cgroup quota and CPU affinity)")
    return int(value)


def find_cpus(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP, affinity: set[int] | None = None,
              environ: Mapping[str, str] | None = None) -> CpuReport:
    """Every source, and the TRITONED_CPUS override. The arguments point it at other files (tests)."""
    findings = (cgroup_v2_limit(root, proc_self_cgroup), cgroup_v1_limit(root, proc_self_cgroup),
                affinity_limit(affinity))
    return CpuReport(findings, parse_override(os.environ if environ is None else environ))


def available_cpus() -> int:
    """The CPUs this server may use: TRITONED_CPUS when set, else the smallest of the cgroup quotas and the CPU
    affinity (at least 1)."""
    return find_cpus().cpus


@dataclass(frozen=True)
class Sizes:
    model_instances: int
    ort_threads: int
    preprocessing_instances: int
    batch_delay_us: int
    # Threads of the second session an instance runs while another instance is busy (0: none, it always runs with
    # ort_threads): instances x ort_threads may exceed the CPUs, so that a lone text gets all of them, but under
    # load the busy instances together keep one thread per CPU.
    busy_ort_threads: int = 0


def busy_threads(cpus: int, instances: int, threads: int) -> int:
    """The threads per instance while others are busy: a share of the CPUs, when all the instances' threads together
    exceed them (0: no second session needed)."""
    if instances * threads <= cpus:
        return 0
    share = max(1, cpus // instances)
    return share if share < threads else 0


def memory_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """The smallest memory limit in bytes of this process's cgroup and its ancestors (v2 memory.max, v1
    memory.limit_in_bytes); None without one."""
    v2_path, v1_path = _cgroup_paths(proc_self_cgroup, "memory")
    files = [d / "memory.max" for d in _candidates(_v2_root(root), v2_path)]
    if (root / "memory").is_dir():
        files += [d / "memory.limit_in_bytes" for d in _candidates(root / "memory", v1_path)]
    limits = [int(text) for text in (_read(f) for f in files) if text and text.isdigit() and int(text) < UNLIMITED]
    return min(limits) if limits else None


def second_sessions_fit(sizes: Sizes, model_bytes: int, limit: int | None) -> bool:
    """Whether the instances' second sessions (one more copy of model.onnx's weights each) stay within
    BUSY_SESSIONS_MEMORY_SHARE of the memory limit (always, without a limit)."""
    return limit is None or sizes.model_instances * model_bytes <= limit * BUSY_SESSIONS_MEMORY_SHARE


def describe_busy(sizes: Sizes) -> str:
    if not sizes.busy_ort_threads:
        return "the same threads under load"
    return f"{sizes.busy_ort_threads} thread(s) per instance while another is busy"


def build_sizing(repository: Path) -> BuildSizing:
    """What the build of `repository` fixed: the member `sizing` of its manifest; SizingError naming the file and the
    fix when the manifest is missing or malformed."""
    try:
        return manifest.load(repository).sizing
    except manifest.ManifestError as error:
        raise SizingError(str(error)) from None


def policy(cpus: int, model_batching: bool = True) -> Sizes:
    """The sizes for `cpus` CPUs.

    model_onnx batches requests (fp32): at least two instances, each with one thread per CPU up to
    MAX_THREADS_PER_SESSION, so that together they have a thread for every CPU. A lone text runs on all the threads
    of one instance; under load the dynamic batcher hands each instance a batch of the queued texts and the two
    share the CPUs, one computing while the other is in Python (padding, tensors in and out): measured on 2 CPUs,
    2 x 2 threads served more texts/s at 16 and 64 in flight than 1 x 2 or 2 x 1, at the p50 of 1 x 2 for a lone
    text (docs/sizing.md). Together the instances then have more threads than CPUs: busy_ort_threads (busy_threads)
    is what an instance runs with while another is busy, so that a loaded server wakes one thread per CPU.
    model_onnx may not batch (a dynamically quantized model: its answers would depend on its neighbours): one
    single-thread instance per CPU, the most texts per second when every run holds one request.
    """
    tokenizers = max(1, math.ceil(cpus / CPUS_PER_TOKENIZER))
    if not model_batching:
        return Sizes(model_instances=cpus, ort_threads=1, preprocessing_instances=tokenizers, batch_delay_us=0)
    threads = min(cpus, MAX_THREADS_PER_SESSION)
    instances = max(MIN_MODEL_INSTANCES, math.ceil(cpus / threads))
    return Sizes(model_instances=instances, ort_threads=threads, preprocessing_instances=tokenizers, batch_delay_us=0,
                 busy_ort_threads=busy_threads(cpus, instances, threads))


def choose(report: CpuReport, build: BuildSizing) -> tuple[Sizes, str]:
    """The sizes to serve with and why: TRITONED_CPUS over everything, then the build's numbers, then auto."""
    auto = policy(report.cpus, build.model_batching)
    if report.override is not None:
        return auto, f"sized for {report.cpus} CPU(s) ({CPUS_ENV} overrides the build's options)"
    explicit = build.explicit()
    sizes = Sizes(**{**asdict(auto), **explicit})
    if "busy_ort_threads" not in explicit:
        busy = busy_threads(report.cpus, sizes.model_instances, sizes.ort_threads) if build.model_batching else 0
        sizes = replace(sizes, busy_ort_threads=busy)
    how = f"sized for {report.cpus} CPU(s)"
    if explicit:
        how += "; fixed at build time: " + ", ".join(f"{k}={v}" for k, v in explicit.items())
    return sizes, how


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.sizing",
                                     description="Print the CPUs this process may use, each source, and the sizes "
                                                 "the server would choose for them (see the module's docstring).")
    parser.add_argument("--cgroup-root", type=Path, default=CGROUP_ROOT, help="default %(default)s")
    parser.add_argument("--proc-self-cgroup", type=Path, default=PROC_SELF_CGROUP, help="default %(default)s")
    parser.add_argument("--repository", type=Path,
                        help=f"a model repository whose build sizing ({manifest.FILE_NAME}) to apply")
    args = parser.parse_args(argv)
    try:
        report = find_cpus(args.cgroup_root, args.proc_self_cgroup)
        build = build_sizing(args.repository) if args.repository else BuildSizing()
    except SizingError as error:
        parser.exit(2, f"sizing: {error}\n")
    sizes, how = choose(report, build)
    print(json.dumps({"cpus": report.cpus, "found": report.found, "override": report.override,
                      "sources": [asdict(f) for f in report.findings], "sizes": asdict(sizes), "how": how}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
