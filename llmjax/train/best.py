"""The best checkpoint by an eval metric (`checkpoint_best_metric`), kept apart from the rolling
ones: WORKDIR/best is a workdir of its own (config.json, tokenizer/, checkpoints/<step> holding
the parameters only), so `eval`, `generate`, `predict`, `convert`, `llmjax.load` and
`init.workdir` take it as they take the run. It is saved only when an eval improves on the best
so far, and survives `max_checkpoints_to_keep`.

The best value so far is the run's own record: the metric's row in metrics.jsonl at the kept
step. A resumed run drops a best step later than the checkpoint it resumes from (as it drops
those rows of metrics.jsonl): the re-run recomputes it.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from llmjax import configs
from llmjax.objectives import finalize
from llmjax.train import faults
from llmjax.train.checkpoint import CheckpointWriteError, checkpoint_dir
from llmjax.train.writer import read_metrics

BEST_DIR = "best"


def lower_is_better(metric: str, mode: str) -> bool:
    """`checkpoint_best_mode`: min / max, or auto = min for losses and perplexity, else max."""
    if mode == "auto":
        return metric.endswith(("loss", "perplexity"))
    return mode == "min"


def eval_metric_names(eval_step, params: Any, batch: dict[str, np.ndarray], loss_terms,
                      extra: tuple[str, ...] = (), extra_sets: tuple[str, ...] = ()
                      ) -> list[str]:
    """The `eval/...` names an eval will report, from the eval step's shapes (traced, not run):
    the finalised metric sums plus `extra` (decoding metrics, the loss floor); and for each
    name of `extra_sets` (data.extra_eval_sources) the same as `eval_NAME/...`, less the
    floor."""
    shapes = jax.eval_shape(eval_step, params, batch)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float64), shapes)
    with np.errstate(all="ignore"):  # ratios of zero counts: only the names matter here
        names = list(finalize(zeros, loss_terms))
    extra_set_names = [f"eval_{s}/{n}" for s in extra_sets for n in (*names, *extra)
                       if n != "best_achievable_loss"]
    return sorted([f"eval/{n}" for n in (*names, *extra)] + extra_set_names)


def check_metric(metric: str, available: list[str]) -> str:
    """`metric` as reported (`accuracy` means `eval/accuracy`), or ConfigError naming the ones
    this run reports."""
    name = metric if metric.startswith(("eval/", "eval_")) else f"eval/{metric}"
    if name not in available:
        raise configs.ConfigError(
            f"checkpoint_best_metric={metric!r} is not reported by this run's eval; use one of "
            f"{', '.join(available)}")
    return name


class BestCheckpoint:
    """Saves the parameters to WORKDIR/best whenever `metric` improves (every process calls
    `update` with the same eval metrics, as orbax saves collectively)."""

    def __init__(self, workdir: epath.Path, metric: str, lower_better: bool, start_step: int,
                 config: ml_collections.ConfigDict, tokenizer):
        self.workdir = epath.Path(workdir)
        self.config, self.tokenizer = config, tokenizer
        self.directory = self.workdir / BEST_DIR
        self.metric, self.lower_better = metric, lower_better
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(
            checkpoint_dir(self.directory), options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler()})
        for step in self.manager.all_steps():
            if step > start_step:  # from steps this resumed run will redo
                self.manager.delete(step)
        self.step = self.manager.latest_step()  # of the best eval so far (None: none yet)
        self.best = self._recorded_value(self.step)

    def _recorded_value(self, step: int | None) -> float | None:
        value = None
        if step is not None and jax.process_index() == 0:
            rows = [r for r in read_metrics(self.workdir) if r["step"] == step and
                    self.metric in r]
            value = rows[-1][self.metric] if rows else None
        if jax.process_count() > 1:  # metrics.jsonl is process 0's: all must agree to save
            from jax.experimental import multihost_utils

            found = multihost_utils.broadcast_one_to_all(
                np.asarray(np.nan if value is None else value, np.float64))
            value = None if np.isnan(found) else float(found)
        return value

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.lower_better else value > self.best

    def update(self, step: int, eval_metrics: dict[str, float], host_params: Any) -> bool:
        """Saves `host_params` as step `step` of best/ if `eval_metrics` improve on the best."""
        value = eval_metrics[self.metric]
        if not self._improves(value):
            return False
        try:
            faults.before_save(step)
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave({"params": host_params})), force=True)
            self.manager.wait_until_finished()
        except OSError as e:  # the previous best is deleted only after a complete save
            kept = (f"the best before it (step {self.step}) is intact" if self.step is not None
                    else "no earlier best was saved")
            raise CheckpointWriteError(
                f"could not write the best checkpoint of step {step} in {self.directory} "
                f"({e.strerror or e}); {kept}, and so are the run's checkpoints. Free disk "
                "space and run the same command to resume from the run's last checkpoint."
            ) from e
        if jax.process_index() == 0:
            (self.directory / "config.json").write_text(configs.to_json(self.config))
            if not (self.directory / "tokenizer").exists():
                self.tokenizer.save(self.directory / "tokenizer")
            previous = "" if self.best is None else f" (was {self.best:.4g})"
            logging.info("step %d: best %s so far, %.4g%s: saved in %s", step, self.metric,
                         value, previous, self.directory)
        self.best, self.step = value, step
        return True

    def summary(self) -> str:
        if self.step is None:
            return f"no eval has had a finite {self.metric}"
        return f"the best, {self.best:.4g} at step {self.step}, is in {self.directory}"

    def close(self) -> None:
        self.manager.close()
