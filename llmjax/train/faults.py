"""Fault injection for the reliability tests: the environment variable LLMJAX_FAULTS names
faults to place exactly, e.g. LLMJAX_FAULTS="nan_at_step=7,kill_in_save_at_step=10".

- `nan_at_step=N`: the loss weights of the batch of update N are NaN (a blown-up loss that
  flows through the real train step);
- `kill_in_save_at_step=N`: SIGKILL once the checkpoint of step N has started writing and
  before it is complete (a machine lost mid-save);
- `disk_full_at_step=N`: saving the checkpoint of step N (and the best one, first) fails with
  ENOSPC.

Unset (always, outside tests), every hook is a no-op.
"""

from __future__ import annotations

import errno
import os
import signal

import numpy as np

ENV = "LLMJAX_FAULTS"


def planned(name: str) -> int | None:
    """The step of fault `name` in LLMJAX_FAULTS, or None."""
    for item in os.environ.get(ENV, "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == name:
            return int(value)
    return None


def poison_batch(batch: dict[str, np.ndarray], weight_keys) -> dict[str, np.ndarray]:
    """`batch` with NaN loss weights (the caller places it at planned('nan_at_step'))."""
    return {k: (v * np.nan if k in weight_keys else v) for k, v in batch.items()}


def before_save(step: int) -> None:
    if planned("disk_full_at_step") == step:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def after_save_started(step: int) -> None:
    if planned("kill_in_save_at_step") == step:
        os.kill(os.getpid(), signal.SIGKILL)
