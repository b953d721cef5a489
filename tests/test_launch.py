"""The `llmjax` command starts with glibc's malloc tunables (llmjax/launch.py): the environment
it re-executes with, that the command really runs under them, and that each tunable spares the
page faults it is there for: huge pages for XLA-sized blocks, top_pad and mmap_max=0 for a
worker thread's smaller ones."""

import os
import subprocess
import sys

import pytest

from llmjax import launch

TUNABLE = launch.HUGE_PAGES_TUNABLE
ALL = ":".join(launch.MALLOC_TUNABLES)
KEEP = ":".join(launch.KEEP_ARENAS_TUNABLES)


def test_the_tunables_are_added_once_and_keep_the_users_own():
    assert launch.environment_with_malloc_tunables({"PATH": "/bin"}) == {
        "PATH": "/bin", "GLIBC_TUNABLES": ALL}
    assert launch.environment_with_malloc_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})[
        "GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{ALL}"
    assert launch.environment_with_malloc_tunables({"GLIBC_TUNABLES": ALL}) is None
    # a user's own value of either tunable stands; the other is still added
    assert launch.environment_with_malloc_tunables({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})[
        "GLIBC_TUNABLES"] == f"glibc.malloc.hugetlb=0:{KEEP}"
    assert launch.missing_malloc_tunables({"GLIBC_TUNABLES": "glibc.malloc.top_pad=0"}) == [
        TUNABLE, "glibc.malloc.mmap_max=0"]
    assert launch.environment_with_malloc_tunables({"LLMJAX_KEEP_MALLOC": "1"}) is None


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",
                                                              "LLMJAX_KEEP_MALLOC")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                          capture_output=True, text=True, check=True)


def test_make_exports_the_commands_tunables():
    # tests and benchmarks run under `make` as the command runs: one list, spelt twice
    makefile = open(os.path.join(os.path.dirname(__file__), "..", "Makefile")).read()
    assert f"export GLIBC_TUNABLES ?= {ALL}\n" in makefile


def test_the_process_reexecutes_itself_with_the_tunables_and_its_arguments():
    code = ("import os, sys; from llmjax import launch; launch.reexec_with_malloc_tunables(); "
            "print(os.getpid(), os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
    out = run_python(code + " # x")
    pid, tunables, argv = out.stdout.split(" ", 2)
    assert tunables == ALL and argv.strip() == "[]"
    kept = run_python(code.replace("os.environ['GLIBC_TUNABLES']", "os.environ.get("
                                   "'GLIBC_TUNABLES')"), LLMJAX_KEEP_MALLOC="1")
    assert kept.stdout.split(" ")[1] == "None"


def transparent_huge_pages() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read()
    except OSError:
        return "[never]"


@pytest.mark.skipif("[never]" in transparent_huge_pages() or not sys.platform.startswith("linux"),
                    reason="the kernel offers no transparent huge pages")
def test_the_tunable_spares_the_page_faults_of_large_buffers():
    # what XLA:CPU does each step: malloc a large buffer, write it, free it (numpy would ask
    # for huge pages itself)
    code = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def step(size=256 * 2**20):
    buffer = libc.malloc(size)
    ctypes.memset(buffer, 1, size)
    libc.free(ctypes.c_void_p(buffer))
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
"""
    plain = int(run_python(code, LLMJAX_KEEP_MALLOC="1").stdout)
    huge = int(run_python(code, GLIBC_TUNABLES=TUNABLE).stdout)
    assert plain > 60_000  # 256 MiB in 4 KiB pages
    assert huge < plain / 20, (plain, huge)


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="glibc's malloc tunables (and RUSAGE_THREAD) are Linux's")
def test_keeping_arenas_spares_a_worker_threads_page_faults_between_steps():
    # what XLA:CPU does each step for a small model: a worker thread, which also holds
    # long-lived buffers, mallocs tens of 1 MiB buffers and one of 34 MiB, writes them and
    # frees them; by default its arena shrinks after each step and the large block is mapped
    # afresh, so the next step faults every page in again
    code = """
import ctypes, resource, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def written(size):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    return block
def step():
    blocks = [written(2**20) for _ in range(24)] + [written(34 * 2**20)]
    for block in reversed(blocks):
        libc.free(ctypes.c_void_p(block))
faults = []
def worker():
    kept = [written(2**20) for _ in range(30)]  # parameters, optimizer state
    step()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(4):
        step()
    faults.append((resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) // 4)
thread = threading.Thread(target=worker)
thread.start()
thread.join()
print(faults[0])
"""
    plain = int(run_python(code, LLMJAX_KEEP_MALLOC="1").stdout)
    padded_only = int(run_python(code, GLIBC_TUNABLES=launch.KEEP_ARENAS_TUNABLES[0]).stdout)
    kept = int(run_python(code, GLIBC_TUNABLES=KEEP).stdout)
    assert plain > 5_000  # 58 MiB in 4 KiB pages, less what the arena kept
    assert padded_only > 5_000  # top_pad alone: the 34 MiB block is still mapped afresh
    assert kept < plain / 20, (plain, kept)
