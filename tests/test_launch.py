"""The `llmjax` command starts with glibc's huge-page malloc tunable (llmjax/launch.py): the
environment it re-executes with, that the command really runs under it, and that the tunable
turns XLA-sized allocations' 4 KiB page faults into huge-page ones."""

import os
import subprocess
import sys

import pytest

from llmjax import launch

TUNABLE = launch.HUGE_PAGES_TUNABLE


def test_the_tunable_is_added_once_and_keeps_the_users_own():
    assert launch.environment_with_huge_pages({"PATH": "/bin"}) == {
        "PATH": "/bin", "GLIBC_TUNABLES": TUNABLE}
    assert launch.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})[
        "GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"
    assert launch.environment_with_huge_pages({"GLIBC_TUNABLES": TUNABLE}) is None
    # a user's own choice of the same tunable stands, and the opt-out is honoured
    assert launch.environment_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert launch.environment_with_huge_pages({"LLMJAX_KEEP_MALLOC": "1"}) is None


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",
                                                              "LLMJAX_KEEP_MALLOC")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                          capture_output=True, text=True, check=True)


def test_the_process_reexecutes_itself_with_the_tunable_and_its_arguments():
    code = ("import os, sys; from llmjax import launch; launch.reexec_with_huge_pages(); "
            "print(os.getpid(), os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
    out = run_python(code + " # x")
    pid, tunables, argv = out.stdout.split(" ", 2)
    assert tunables == TUNABLE and argv.strip() == "[]"
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
