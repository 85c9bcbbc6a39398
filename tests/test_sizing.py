"""gateway/sizing.py and gateway/sized_repository.py: the CPUs found from cgroup files laid out like /sys/fs/cgroup
(v2, v1, hybrid), from the CPU affinity of a real process under taskset, TRITONED_CPUS, and the sized copy of a
read-only repository."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from gateway import manifest, sized_repository, sizing

sys.path.insert(0, str(ROOT / "utils"))
from write_manifest import manifest as written  # noqa: E402

ALL_CPUS = sorted(os.sched_getaffinity(0))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def v2_tree(root: Path, limits: dict[str, str], own: str = "/") -> Path:
    """A cgroup v2 mount at root: cpu.max per directory (relative path -> content); /proc/self/cgroup says `own`."""
    write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    for directory, text in limits.items():
        write(root / directory / "cpu.max", text + "\n")
    return write(root.parent / "proc_self_cgroup", f"0::{own}\n")


def v1_tree(root: Path, mount: str, quota: str, period: str, own: str = "/") -> Path:
    base = root / mount / own.strip("/")
    write(base / "cpu.cfs_quota_us", quota + "\n")
    write(base / "cpu.cfs_period_us", period + "\n")
    return write(root.parent / "proc_self_cgroup",
                 f"12:memory:{own}\n4:{'cpu,cpuacct' if ',' in mount else 'cpu'}:{own}\n0::/\n")


@pytest.mark.parametrize("quota, expected", [
    ("200000 100000", 2), ("150000 100000", 1), ("180000 100000", 2), ("50000 100000", 1), ("1000 100000", 1),
    ("400000 100000", 4), ("max 100000", None),
])
def test_cgroup_v2_quota(tmp_path: Path, quota: str, expected: int | None) -> None:
    proc = v2_tree(tmp_path / "cgroup", {"": quota})
    report = sizing.find_cpus(tmp_path / "cgroup", proc, affinity=set(range(64)), environ={})
    assert report.cpus == (expected if expected is not None else 64)
    assert "cgroup v2 cpu.max" in report.describe()


def test_cgroup_v2_smallest_along_the_path_wins(tmp_path: Path) -> None:
    """A pod's quota sits on an ancestor of the container's cgroup: every level counts, the smallest wins."""
    proc = v2_tree(tmp_path / "cgroup", {"kubepods/pod1": "300000 100000", "kubepods/pod1/ctr": "max 100000",
                                         "kubepods": "max 100000"}, own="/kubepods/pod1/ctr")
    report = sizing.find_cpus(tmp_path / "cgroup", proc, affinity=set(range(16)), environ={})
    assert report.cpus == 3
    assert "kubepods/pod1/cpu.max" in report.describe()


@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_quota(tmp_path: Path, mount: str) -> None:
    proc = v1_tree(tmp_path / "cgroup", mount, "250000", "100000", own="/docker/abc")
    report = sizing.find_cpus(tmp_path / "cgroup", proc, affinity=set(range(8)), environ={})
    assert report.cpus == 2  # 2.5 CPUs: the half core is not counted
    assert "cgroup v1 cfs quota: 2.5" in report.describe()


def test_cgroup_v1_no_quota_and_container_view(tmp_path: Path) -> None:
    """-1 is no quota; a container sees its own cgroup at the mount's root while /proc/self/cgroup names the
    host's path."""
    proc = v1_tree(tmp_path / "cgroup", "cpu", "-1", "100000")
    assert sizing.find_cpus(tmp_path / "cgroup", proc, affinity={0, 1, 2}, environ={}).cpus == 3
    write(tmp_path / "cgroup" / "cpu" / "cpu.cfs_quota_us", "100000\n")
    write(tmp_path / "proc_self_cgroup", "4:cpu:/docker/not-mounted-here\n")
    assert sizing.find_cpus(tmp_path / "cgroup", tmp_path / "proc_self_cgroup", affinity={0, 1, 2},
                            environ={}).cpus == 1


def test_hybrid_layout_reads_unified(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "unified" / "cpu.max", "100000 100000\n")
    (root / "cpu").mkdir()
    proc = write(tmp_path / "proc_self_cgroup", "1:cpu:/\n0::/\n")
    assert sizing.find_cpus(root, proc, affinity={0, 1, 2, 3}, environ={}).cpus == 1


def test_affinity_smaller_than_quota_wins(tmp_path: Path) -> None:
    proc = v2_tree(tmp_path / "cgroup", {"": "800000 100000"})
    report = sizing.find_cpus(tmp_path / "cgroup", proc, affinity={3, 5}, environ={})
    assert (report.found, report.cpus) == (2, 2)


def test_missing_and_garbage_files_mean_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "")
    write(root / "cpu.max", "lots of cpus\n")
    write(root / "cpu" / "cpu.cfs_quota_us", "\x00\xff")
    proc = write(tmp_path / "proc_self_cgroup", "garbage\n::\n0::/../../etc\n")
    assert sizing.find_cpus(root, proc, affinity={0}, environ={}).cpus == 1
    assert sizing.find_cpus(tmp_path / "absent", tmp_path / "absent2", affinity={0, 1}, environ={}).cpus == 2


def test_override_wins_and_is_reported(tmp_path: Path) -> None:
    proc = v2_tree(tmp_path / "cgroup", {"": "100000 100000"})
    report = sizing.find_cpus(tmp_path / "cgroup", proc, affinity={0}, environ={"TRITONED_CPUS": "6"})
    assert (report.found, report.cpus) == (1, 6)
    assert "TRITONED_CPUS=6 overrides" in report.describe()


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "two", "4 4", "9" * 30 + "x"])
def test_hostile_override_is_refused_with_the_fix(value: str) -> None:
    with pytest.raises(sizing.SizingError, match="TRITONED_CPUS=.*whole number of CPUs >= 1"):
        sizing.find_cpus(environ={"TRITONED_CPUS": value})


def run_sizing(*args: str, cpus: list[int] | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    prefix = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
    environ = {k: v for k, v in os.environ.items() if k != "TRITONED_CPUS"}
    return subprocess.run([*prefix, sys.executable, "-m", "gateway.sizing", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**environ, **(env or {})}, timeout=60)


def test_a_real_process_under_taskset() -> None:
    if shutil.which("taskset") is None:
        pytest.skip("taskset not installed (util-linux)")
    one = json.loads(run_sizing(cpus=ALL_CPUS[:1]).stdout)
    everything = json.loads(run_sizing().stdout)
    assert one["cpus"] == 1
    assert any(s["source"] == "sched_getaffinity" and s["cpus"] == 1 for s in one["sources"])
    assert one["sizes"]["ort_threads"] == 1
    assert everything["cpus"] == min(len(ALL_CPUS), everything["found"])
    assert everything["sizes"]["ort_threads"] == min(everything["cpus"], sizing.MAX_THREADS_PER_SESSION)
    overridden = json.loads(run_sizing(cpus=ALL_CPUS[:1], env={"TRITONED_CPUS": "3"}).stdout)
    assert (overridden["found"], overridden["cpus"], overridden["sizes"]["ort_threads"]) == (1, 3, 3)
    bad = run_sizing(env={"TRITONED_CPUS": "many"})
    assert bad.returncode == 2 and "TRITONED_CPUS='many'" in bad.stderr


@pytest.mark.parametrize("cpus", [1, 2, 3, 8, 12, 16, 64])
def test_policy_gives_a_lone_text_many_threads_and_every_cpu_a_thread(cpus: int) -> None:
    batched = sizing.policy(cpus)
    assert batched.ort_threads == min(cpus, sizing.MAX_THREADS_PER_SESSION)
    assert batched.model_instances >= 2  # one computes while the other is between runs
    assert batched.model_instances * batched.ort_threads >= cpus
    assert (batched.model_instances - 1) * batched.ort_threads < max(cpus, 2 * batched.ort_threads)
    assert batched.preprocessing_instances >= 1
    alone = sizing.policy(cpus, model_batching=False)  # a quantized model: one request per run
    assert (alone.model_instances, alone.ort_threads, alone.busy_ort_threads) == (cpus, 1, 0)
    # Under load (every instance busy) the instances' threads together: one per CPU, not more.
    busy = batched.busy_ort_threads or batched.ort_threads
    assert busy <= batched.ort_threads and batched.model_instances * busy <= max(cpus, batched.model_instances)
    if batched.model_instances * batched.ort_threads > cpus and batched.ort_threads > 1:
        assert 1 <= batched.busy_ort_threads < batched.ort_threads
        assert batched.model_instances * (batched.busy_ort_threads + 1) > cpus  # no CPU left idle for long


@pytest.mark.parametrize("cpus, expected", [(1, (2, 1, 0)), (2, (2, 2, 1)), (4, (2, 4, 2)), (8, (2, 8, 4)),
                                            (12, (2, 8, 6)), (16, (2, 8, 0)), (24, (3, 8, 0))])
def test_busy_threads_share_the_cpus_among_busy_instances(cpus: int, expected: tuple[int, int, int]) -> None:
    sizes = sizing.policy(cpus)
    assert (sizes.model_instances, sizes.ort_threads, sizes.busy_ort_threads) == expected


def test_memory_limit_v2_v1_and_none(tmp_path: Path) -> None:
    """The smallest memory limit along the cgroup path, v2 (memory.max) or v1 (memory.limit_in_bytes); "max" and
    v1's huge "no limit" value are no limit."""
    root = tmp_path / "v2" / "cgroup"
    own = v2_tree(root, {}, own="/kubepods/pod1/c1")
    write(root / "kubepods" / "pod1" / "memory.max", f"{2 << 30}\n")
    write(root / "kubepods" / "pod1" / "c1" / "memory.max", "max\n")
    assert sizing.memory_limit(root, own) == 2 << 30
    root1 = tmp_path / "v1" / "cgroup"
    write(root1 / "memory" / "docker" / "abc" / "memory.limit_in_bytes", f"{1 << 30}\n")
    write(root1 / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    own1 = write(tmp_path / "v1" / "proc_self_cgroup", "4:memory:/docker/abc\n0::/\n")
    assert sizing.memory_limit(root1, own1) == 1 << 30
    assert sizing.memory_limit(tmp_path / "none", tmp_path / "missing") is None


def test_second_sessions_only_where_their_copies_fit_a_quarter_of_the_memory() -> None:
    sizes = sizing.policy(2)
    assert sizes.busy_ort_threads == 1 and sizes.model_instances == 2
    mib = 1 << 20
    assert sizing.second_sessions_fit(sizes, 90 * mib, None)  # no limit: always
    assert sizing.second_sessions_fit(sizes, 90 * mib, 1024 * mib)  # MiniLM-L6 in docker run -m 1g: 180 <= 256
    assert not sizing.second_sessions_fit(sizes, 440 * mib, 1536 * mib)  # BERT-base in the chart's 1536Mi: 880 > 384


def test_a_large_model_in_a_small_memory_limit_gets_no_second_sessions(tmp_path: Path) -> None:
    """The sized repository's rule: model_onnx's files (model.onnx and external data, links followed) against the
    memory limit; the sized config then says 0 second-session threads."""
    repo = read_only_repository(tmp_path)  # model.onnx of 7 bytes
    mib = 1 << 20
    data = tmp_path / "model.onnx.data"
    with open(data, "wb") as sparse:
        sparse.truncate(300 * mib)  # sparse: no disk used
    sizes = sizing.policy(2)
    assert sized_repository.within_memory(sizes, repo, 1024 * mib) == sizes  # 2 x 7 bytes
    link_dir = tmp_path / "linked"
    shutil.copytree(repo, link_dir, symlinks=True)
    (link_dir / "model_onnx" / "1").chmod(0o700)
    (link_dir / "model_onnx" / "1" / "model.onnx.data").symlink_to(data)
    assert sized_repository.model_size(link_dir) == 300 * mib + len("weights")
    assert sized_repository.within_memory(sizes, link_dir, 1024 * mib).busy_ort_threads == 0  # 600 MiB > 256
    assert sized_repository.within_memory(sizes, link_dir, 4096 * mib) == sizes  # 600 MiB <= 1024
    assert sized_repository.within_memory(sizes, link_dir, None) == sizes
    base = tmp_path / "tmp"
    base.mkdir()
    target = sized_repository.render(link_dir, sized_repository.within_memory(sizes, link_dir, 1024 * mib), base)
    onnx = (target / "model_onnx" / "config.pbtxt").read_text()
    assert 'busy_intra_op_thread_count" value: { string_value: "0"' in onnx, onnx
    shutil.rmtree(target)


def build_file(repository: Path, sizing_object: object = None, **sizes) -> Path:
    """The manifest tritoned.json as utils/write_manifest.py writes it, with these sizes (or this `sizing` member)."""
    data = written("ensemble_model", labels=["a", "b"], max_batch_size=4, function="softmax",
                   pipeline_function="softmax", max_sequence_length=64, sizes=sizes)
    if sizing_object is not None:
        data["sizing"] = sizing_object
    return write(repository / manifest.FILE_NAME, json.dumps(data))


def test_build_options_win_over_auto_and_the_override_over_both(tmp_path: Path) -> None:
    build_file(tmp_path, model_instances=3, ort_threads="auto")
    build = sizing.build_sizing(tmp_path)
    cpus = sizing.CpuReport((sizing.Finding("test", 4.0, "4"),))
    sizes, how = sizing.choose(cpus, build)
    assert (sizes.model_instances, sizes.ort_threads) == (3, 4)
    assert "fixed at build time: model_instances=3" in how
    overridden = sizing.CpuReport(cpus.findings, override=2)
    sizes, how = sizing.choose(overridden, build)
    assert (sizes.model_instances, sizes.ort_threads) == (2, 2) and "TRITONED_CPUS" in how
    # The build's numbers get busy threads for the CPUs found: 3 instances x 4 threads on 4 CPUs -> 1 when busy.
    build_file(tmp_path, model_instances=3, ort_threads=4)
    sizes, _ = sizing.choose(cpus, sizing.build_sizing(tmp_path))
    assert (sizes.model_instances, sizes.ort_threads, sizes.busy_ort_threads) == (3, 4, 1)
    build_file(tmp_path, model_instances=1, ort_threads=4)  # one instance: never another busy one
    assert sizing.choose(cpus, sizing.build_sizing(tmp_path))[0].busy_ort_threads == 0
    build_file(tmp_path, busy_ort_threads=0)  # make_triton_image.sh --busy-ort-threads 0: no second session
    two = sizing.CpuReport((sizing.Finding("test", 2.0, "2"),))
    assert sizing.choose(two, sizing.build_sizing(tmp_path))[0].busy_ort_threads == 0
    assert sizing.choose(sizing.CpuReport(two.findings, override=2), sizing.build_sizing(tmp_path))[0] \
        .busy_ort_threads == 1  # TRITONED_CPUS: everything chosen for the CPUs again


@pytest.mark.parametrize("content, expected", [
    ('"auto"', "member 'sizing' has the wrong type"), ("[]", "member 'sizing' has the wrong type"),
    ({"model_instances": 0}, "sizing.model_instances must be \"auto\" or an integer >= 1, got 0"),
    ({"ort_threads": "many"}, "sizing.ort_threads must be \"auto\" or an integer >= 0, got 'many'"),
    ({"model_instances": True}, "sizing.model_instances must be"), ({"batch_delay_us": -1}, "sizing.batch_delay_us"),
    ({"model_batching": "yes"}, "sizing.model_batching must be true or false, got 'yes'"),
    ({"busy_ort_threads": -2}, "sizing.busy_ort_threads must be"),
    ({"model_instance": 2}, "sizing has unknown member(s) model_instance"),
])
def test_hostile_sizing_in_the_manifest(tmp_path: Path, content: object, expected: str) -> None:
    """A bad `sizing` member of tritoned.json: the gateway refuses to start (SizingError: exit 2), naming the file,
    the member and the fix."""
    build_file(tmp_path, sizing_object=json.loads(content) if isinstance(content, str) else content)
    args = ["tritonserver", f"--model-repository={tmp_path}"]
    with pytest.raises(sizing.SizingError) as raised:
        sized_repository.sized(args)
    message = str(raised.value)
    assert expected in message and str(tmp_path / manifest.FILE_NAME) in message, message
    assert "make_triton_image.sh" in message, message


def test_an_old_manifest_without_sizing_is_refused(tmp_path: Path) -> None:
    old = json.loads(build_file(tmp_path).read_text())
    del old["sizing"]
    for data, expected in (({**old, "format": 1}, f"format 1 is not {manifest.FORMAT}"), (old, "member 'sizing' is missing")):
        write(tmp_path / manifest.FILE_NAME, json.dumps(data))
        with pytest.raises(sizing.SizingError, match="make_triton_image.sh") as raised:
            sizing.build_sizing(tmp_path)
        assert expected in str(raised.value) and manifest.FILE_NAME in str(raised.value)


CONFIG_ONNX = """name: "model_onnx"
max_batch_size: 64
parameters { key: "intra_op_thread_count" value: { string_value: "0" } }
parameters { key: "busy_intra_op_thread_count" value: { string_value: "0" } }
instance_group [ { count: 1, kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 0 }
"""
CONFIG_TOKENIZER = 'name: "text_preprocessing"\ninstance_group [ { count: 1, kind: KIND_CPU } ]\n'


def read_only_repository(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    write(repo / "model_onnx" / "config.pbtxt", CONFIG_ONNX)
    write(repo / "model_onnx" / "1" / "model.onnx", "weights")
    write(repo / "text_preprocessing" / "config.pbtxt", CONFIG_TOKENIZER)
    write(repo / "text_preprocessing" / "1" / "tokenizer" / "tokenizer.json", "{}")
    build_file(repo)
    for path in [repo, *repo.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return repo


def test_sized_copy_links_the_large_files_and_leaves_the_source_alone(tmp_path: Path) -> None:
    repo = read_only_repository(tmp_path)
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    sizes = sizing.Sizes(model_instances=2, ort_threads=3, preprocessing_instances=4, batch_delay_us=250,
                         busy_ort_threads=1)
    base = tmp_path / "tmp"
    base.mkdir()
    target = sized_repository.render(repo, sizes, base)
    onnx = (target / "model_onnx" / "config.pbtxt").read_text()
    assert "count: 2," in onnx and 'intra_op_thread_count" value: { string_value: "3"' in onnx
    assert 'busy_intra_op_thread_count" value: { string_value: "1"' in onnx
    assert "max_queue_delay_microseconds: 250" in onnx
    assert "count: 4," in (target / "text_preprocessing" / "config.pbtxt").read_text()
    assert (target / "model_onnx" / "1").is_symlink()
    assert (target / "model_onnx" / "1" / "model.onnx").read_text() == "weights"
    assert (target / manifest.FILE_NAME).is_symlink()
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    shutil.rmtree(target)
    assert (repo / "model_onnx" / "1" / "model.onnx").read_text() == "weights"


def test_stale_copies_go_and_live_ones_stay(tmp_path: Path) -> None:
    ns = sized_repository._pid_namespace()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{sized_repository.PREFIX}{ns}_{dead.pid}"
    live = tmp_path / f"{sized_repository.PREFIX}{ns}_1"
    other_ns = tmp_path / f"{sized_repository.PREFIX}999_{dead.pid}"
    kept_target = tmp_path / "kept"
    for directory in (stale, live, other_ns, kept_target):
        directory.mkdir()
    (stale / "link").symlink_to(kept_target)
    sized_repository.remove_stale(tmp_path)
    assert not stale.exists() and live.exists() and other_ns.exists() and kept_target.exists()


def test_a_config_not_laid_out_as_built_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write(repo / "model_onnx" / "config.pbtxt", 'name: "model_onnx"\ninstance_group [{count: 1}]\n')
    with pytest.raises(sizing.SizingError, match="reassemble the repository"):
        sized_repository.render(repo, sizing.policy(2), tmp_path)


def test_a_repository_without_manifest_is_served_as_it_is(tmp_path: Path) -> None:
    args = ["tritonserver", f"--model-repository={tmp_path}", "--log-verbose=1"]
    assert sized_repository.sized(args) == args
