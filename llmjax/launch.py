"""The `llmjax` command's entry point: process settings that must be in place when Python
starts, then the CLI.

XLA:CPU allocates each step's temporary buffers (activations, workspace: 1.2 GB for a
6 x 384 decoder at 16 x 256 tokens) with posix_memalign from a worker thread's malloc arena.
glibc serves a block that large with a fresh mmap and unmaps it when XLA frees it, so every
step faults its whole working set in again, 4 KiB at a time: measured on that decoder, 311k page
faults and 0.45 s of kernel time per step. glibc's tunable `glibc.malloc.hugetlb=1` (glibc 2.35
and later) has malloc ask for transparent huge pages on those maps: 1,170 faults per step and
bfloat16 steps 1.3x faster (900 -> 693 ms; float32 steps unchanged: benchmarks/host_memory.py).
Tunables are read once, when the process starts, so the command re-executes itself with the
tunable added to GLIBC_TUNABLES.
Elsewhere (another C library, a kernel without transparent huge pages) it changes nothing.
"""

from __future__ import annotations

import os
import sys

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def environment_with_huge_pages(env: dict[str, str]) -> dict[str, str] | None:
    """`env` with the huge-page tunable added to GLIBC_TUNABLES, or None when it needs none
    (already set either way, not Linux, or LLMJAX_KEEP_MALLOC=1)."""
    tunables = env.get("GLIBC_TUNABLES", "")
    if (not sys.platform.startswith("linux") or env.get("LLMJAX_KEEP_MALLOC") == "1"
            or "glibc.malloc.hugetlb" in tunables):
        return None
    return {**env, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGE_PAGES_TUNABLE]))}


def reexec_with_huge_pages() -> None:
    """Replaces this process by the same command line with the huge-page tunable set (same
    pid, so shells, schedulers and signals see one process); returns when none is needed."""
    env = environment_with_huge_pages(dict(os.environ))
    if env is not None:
        os.execve(sys.executable, sys.orig_argv, env)


def main() -> None:
    reexec_with_huge_pages()
    from llmjax.cli import run

    run()
