"""The memory limit: sizes as operators write them, and both cgroup layouts, from fake
/proc and /sys trees in a temporary directory (the real layout is read by
tests/test_admission.py's process test, inside a real memory cgroup)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from hps.memory import (
    HeapSlack,
    Limit,
    cgroup_limit,
    heap_free,
    parse_size,
    resolve,
    rss,
    size_problem,
)

V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 {root} /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTS = "30 23 0:26 {root} /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def fake(tmp: Path, cgroup: str, mounts: str, files: dict[str, str]) -> str:
    (tmp / "proc/self").mkdir(parents=True)
    (tmp / "proc/self/cgroup").write_text(cgroup)
    (tmp / "proc/self/mountinfo").write_text(mounts)
    for name, text in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text + "\n")
    return str(tmp)


@pytest.mark.parametrize(("text", "size"), [
    ("268435456", 268435456), ("256Mi", 256 << 20), ("256MiB", 256 << 20), ("1Gi", 1 << 30),
    ("1.5Gi", 3 << 29), ("512k", 512_000), ("2G", 2_000_000_000), (" 64 mi ", 64 << 20),
    ("0", None), ("none", None), ("Off", None),
])
def test_sizes_as_operators_write_them(text: str, size: int | None) -> None:
    assert parse_size(text) == size
    assert size_problem(text) is None


@pytest.mark.parametrize("text", ["", "lots", "-1", "12Qi", "0.0001"])
def test_a_bad_size_is_one_line(text: str) -> None:
    problem = size_problem(text)
    assert problem is not None and "\n" not in problem and "size" in problem


def test_a_setting_wins_over_the_cgroup(tmp_path: Path) -> None:
    root = fake(tmp_path, "0::/pod\n", V2_MOUNTS.format(root="/"),
                {"sys/fs/cgroup/pod/memory.max": "1048576"})
    assert resolve("auto", root) == Limit(1048576, "cgroup v2 /sys/fs/cgroup/pod/memory.max")
    assert resolve("256Mi", root) == Limit(256 << 20, "--memory-limit")
    assert resolve("none", root).bytes is None


def test_cgroup_v2_the_smallest_limit_up_the_tree(tmp_path: Path) -> None:
    root = fake(tmp_path, "0::/kubepods/pod1/app\n", V2_MOUNTS.format(root="/"), {
        "sys/fs/cgroup/kubepods/memory.max": "max",
        "sys/fs/cgroup/kubepods/pod1/memory.max": "268435456",
        "sys/fs/cgroup/kubepods/pod1/app/memory.max": "max",
    })
    assert cgroup_limit(root) == Limit(268435456,
                                       "cgroup v2 /sys/fs/cgroup/kubepods/pod1/memory.max")


def test_cgroup_v2_in_a_container_namespace(tmp_path: Path) -> None:
    """A container sees its own cgroup as ``/`` at the mount's root."""
    root = fake(tmp_path, "0::/\n", V2_MOUNTS.format(root="/"),
                {"sys/fs/cgroup/memory.max": "536870912"})
    assert cgroup_limit(root).bytes == 536870912


def test_cgroup_v2_max_is_no_limit(tmp_path: Path) -> None:
    root = fake(tmp_path, "0::/user.slice\n", V2_MOUNTS.format(root="/"),
                {"sys/fs/cgroup/user.slice/memory.max": "max"})
    assert cgroup_limit(root) == Limit(None, "cgroup v2: no limit set")


def test_cgroup_v1_memory_controller(tmp_path: Path) -> None:
    root = fake(tmp_path, "9:name=systemd:/\n4:memory:/hps-test\n0::/\n",
                V1_MOUNTS.format(root="/"), {
                    "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712",
                    "sys/fs/cgroup/memory/hps-test/memory.limit_in_bytes": "268435456",
                })
    assert cgroup_limit(root) == Limit(
        268435456, "cgroup v1 /sys/fs/cgroup/memory/hps-test/memory.limit_in_bytes")


def test_cgroup_v1_unlimited_is_a_huge_number(tmp_path: Path) -> None:
    root = fake(tmp_path, "4:memory:/x\n", V1_MOUNTS.format(root="/"),
                {"sys/fs/cgroup/memory/x/memory.limit_in_bytes": "9223372036854771712"})
    assert cgroup_limit(root) == Limit(None, "cgroup v1: no limit set")


def test_cgroup_v1_mounted_at_the_containers_own_group(tmp_path: Path) -> None:
    """Docker on v1: /proc/self/cgroup names the host's path, the mount's root is that path."""
    root = fake(tmp_path, "4:memory:/docker/abc\n", V1_MOUNTS.format(root="/docker/abc"),
                {"sys/fs/cgroup/memory/memory.limit_in_bytes": "134217728"})
    assert cgroup_limit(root).bytes == 134217728


def test_no_memory_controller_means_no_bound(tmp_path: Path) -> None:
    mounts = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
    assert cgroup_limit(fake(tmp_path, "1:cpu:/\n", mounts, {})) == Limit(
        None, "no memory cgroup mounted")
    assert cgroup_limit(str(tmp_path / "nowhere")) == Limit(None, "no /proc/self/cgroup")


def test_this_machine(tmp_path: Path) -> None:
    """The real /proc of this process: whatever it finds names a real file, or says why not."""
    limit = cgroup_limit()
    if limit.bytes is not None:
        where = limit.source.split(" ", 2)[2]
        assert int(Path(where).read_text()) == limit.bytes
    else:
        assert limit.source
    assert rss() > 1 << 20


# -- the C heap's slack ----------------------------------------------------------------------

class FakeHeap:
    """A C heap whose free count the test sets, and that counts its trims."""

    def __init__(self) -> None:
        self.free, self.trims = 0, 0

    def trim(self) -> bool:
        self.trims += 1
        return True


def test_a_burst_of_frees_is_trimmed_once() -> None:
    heap = FakeHeap()
    slack = HeapSlack(free=lambda: heap.free, trim=heap.trim, step=100)
    heap.free = 1000
    assert not slack.check()  # the first look sets the floor
    heap.free = 1099
    assert not slack.check() and heap.trims == 0
    heap.free = 1100
    assert slack.check() and heap.trims == 1
    # A trim leaves the chunks free (their pages go): the count stays, no trim again.
    assert not slack.check() and not slack.check() and heap.trims == 1


def test_reuse_lowers_the_floor_and_the_next_burst_trims_again() -> None:
    heap = FakeHeap()
    slack = HeapSlack(free=lambda: heap.free, trim=heap.trim, step=100)
    heap.free = 500
    slack.check()
    heap.free = 200  # reused: the next burst counts from here
    assert not slack.check()
    heap.free = 299
    assert not slack.check()
    heap.free = 300
    assert slack.check() and heap.trims == 1 and slack.trims == 1


def test_without_glibcs_calls_nothing_happens() -> None:
    heap = FakeHeap()
    assert not HeapSlack(free=lambda: None, trim=heap.trim).check()
    heap.free = 1 << 30
    no_trim = HeapSlack(free=lambda: heap.free, trim=lambda: False, step=1)
    no_trim.check()
    heap.free += 2
    assert not no_trim.check() and no_trim.trims == 0


def test_freed_pages_go_back_on_this_machine() -> None:
    """The real allocator: 32 MiB in 32 KiB chunks (below the mmap threshold: heap),
    touched; every other one freed (the ones kept between them stop the freed ones from
    merging into the heap's top, which glibc trims by itself): the free count grows by
    16 MiB and the check gives their pages back (the resident size falls)."""
    if heap_free() is None:
        pytest.fail("glibc's mallinfo2 is missing: this machine's Python is not on glibc")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    slack = HeapSlack()
    chunks = [libc.malloc(32 << 10) for _ in range(1024)]
    for chunk in chunks:
        ctypes.memset(chunk, 1, 32 << 10)
    slack.check()  # a sample while they are held (the floor: the heap's free count then)
    held = rss()
    for chunk in chunks[::2]:
        libc.free(chunk)
    assert slack.check() and slack.trims == 1
    assert held - rss() >= 8 << 20
    for chunk in chunks[1::2]:
        libc.free(chunk)
