"""Fault injection for the reliability tests: the environment variable LLMJAX_FAULTS names
faults to place exactly, e.g. LLMJAX_FAULTS="nan_at_step=7,kill_in_save_at_step=10".

- `nan_at_step=N`: the loss weights of the batch of update N are NaN (a blown-up loss that
  flows through the real train step);
- `kill_in_save_at_step=N`: SIGKILL once the checkpoint of step N has started writing and
  before it is complete (a machine lost mid-save);
- `disk_full_at_step=N`: saving the checkpoint of step N fails with ENOSPC.

Unset (always, outside tests), every hook is a no-op.
"""

from __future__ import annotations

import errno
import os
import signal

import numpy as np

ENV = "LLMJAX_FAULTS"


def _planned(name: str) -> int | None:
    for item in os.environ.get(ENV, "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == name:
            return int(value)
    return None


def poison_batch(batch: dict[str, np.ndarray], step: int, weight_keys) -> dict[str, np.ndarray]:
    """`batch` (for update number `step`, counted from 1) with NaN loss weights if planned."""
    if _planned("nan_at_step") != step:
        return batch
    return {k: (v * np.nan if k in weight_keys else v) for k, v in batch.items()}


def before_save(step: int) -> None:
    if _planned("disk_full_at_step") == step:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def after_save_started(step: int) -> None:
    if _planned("kill_in_save_at_step") == step:
        os.kill(os.getpid(), signal.SIGKILL)
