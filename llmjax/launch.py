"""The `llmjax` command's entry point: process settings that must be in place when Python
starts, then the CLI.

XLA:CPU allocates each step's temporary buffers (activations, workspace) with malloc from a
worker thread's arena and frees them when the step ends. With glibc's defaults that memory goes
back to the kernel every step, and every step faults its working set in again. Three glibc
tunables (read once, when the process starts) keep it:

- `glibc.malloc.hugetlb=1` (glibc 2.35 and later): blocks larger than an arena's 64 MiB heap
  (1.2 GB for a 6 x 384 decoder at 16 x 256 tokens), which glibc maps afresh for each step,
  come as transparent huge pages: 311k page faults per step -> 1,170, bfloat16 steps 1.3x
  faster (900 -> 693 ms; float32 unchanged).
- `glibc.malloc.top_pad=64 MiB` and `glibc.malloc.mmap_max=0`: an arena grows by the request
  plus 64 MiB and keeps that much free when it shrinks, and serves blocks of 32-64 MiB itself
  instead of mapping each afresh, so the buffers of a small model's step (34 MB for nanoGPT's
  4 x 128 recipe) stay mapped from one step to the next: 446 page faults and 7 ms of kernel
  time per step -> 0 and 1 ms, 23.1 -> 19.5 ms per bfloat16 step (float32: 34.3 -> 32.3 ms
  in one run each).
  The cost: an arena keeps up to 64 MiB free, and memory freed inside an arena returns to the
  kernel only when it is at the arena's top.

benchmarks/host_memory.py measures them. The command re-executes itself once with whichever of
them GLIBC_TUNABLES lacks. Elsewhere (another C library) they change nothing.
"""

from __future__ import annotations

import os
import sys

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
KEEP_ARENAS_TUNABLES = (f"glibc.malloc.top_pad={64 << 20}", "glibc.malloc.mmap_max=0")
MALLOC_TUNABLES = (HUGE_PAGES_TUNABLE, *KEEP_ARENAS_TUNABLES)


def missing_malloc_tunables(env: dict[str, str]) -> list[str]:
    """The tunables of MALLOC_TUNABLES whose names GLIBC_TUNABLES in `env` does not set (a
    value set by the user stands); none off Linux or with LLMJAX_KEEP_MALLOC=1."""
    if not sys.platform.startswith("linux") or env.get("LLMJAX_KEEP_MALLOC") == "1":
        return []
    names = {item.partition("=")[0] for item in env.get("GLIBC_TUNABLES", "").split(":")}
    return [t for t in MALLOC_TUNABLES if t.partition("=")[0] not in names]


def environment_with_malloc_tunables(env: dict[str, str]) -> dict[str, str] | None:
    """`env` with the missing malloc tunables appended to GLIBC_TUNABLES, or None when none
    is missing."""
    missing = missing_malloc_tunables(env)
    if not missing:
        return None
    return {**env, "GLIBC_TUNABLES": ":".join(filter(None, [env.get("GLIBC_TUNABLES", ""),
                                                            *missing]))}


def reexec_with_malloc_tunables() -> None:
    """Replaces this process by the same command line with the malloc tunables set (same
    pid, so shells, schedulers and signals see one process); returns when none is missing."""
    env = environment_with_malloc_tunables(dict(os.environ))
    if env is not None:
        os.execve(sys.executable, sys.orig_argv, env)


def main() -> None:
    reexec_with_malloc_tunables()
    from llmjax.cli import run

    run()
