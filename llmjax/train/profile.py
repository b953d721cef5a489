"""A jax.profiler trace of chosen training steps (the `profile.*` config keys)."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath


class StepProfile:
    """A jax.profiler trace of training steps [start_step, start_step + num_steps) (`profile.*`
    keys) into WORKDIR/plugins/profile/<time>/, where TensorBoard's Profile tab finds it."""

    def __init__(self, options: ml_collections.ConfigDict, workdir: epath.Path):
        self.first = options.start_step
        self.last = None if self.first is None else self.first + options.num_steps - 1
        self.workdir, self.tracing = workdir, False

    def before_step(self, step: int, state: Any) -> None:
        if step == self.first:
            jax.block_until_ready(state)  # earlier steps' work stays out of the trace
            jax.profiler.start_trace(str(self.workdir))
            self.tracing = True

    def after_step(self, step: int, state: Any) -> None:
        if step == self.last:
            self.stop(state)

    def stop(self, state: Any) -> None:
        if not self.tracing:
            return
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        self.tracing = False
        logging.info("wrote a profile of steps %d-%d to %s (tensorboard --logdir=%s, Profile "
                     "tab, with tensorboard-plugin-profile; or the trace.json.gz in Perfetto)",
                     self.first, self.last, self.workdir / "plugins" / "profile", self.workdir)
