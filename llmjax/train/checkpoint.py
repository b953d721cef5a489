"""Checkpoints through one orbax CheckpointManager: the train state (StandardSave) and the grain
data-iterator state (grain's own handler, one file per process), saved together per step.

Layout: WORKDIR/checkpoints/<step>/{state,data}. Saves are async; `max_to_keep` prunes old ones.
`restore_params` reads only the parameters of another run (fine-tuning). A checkpoint written
without a data iterator holds parameters only (converted models, a run's best/ folder): it can be
read, fine-tuned from and evaluated, not resumed.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from llmjax.train import faults


def checkpoint_dir(workdir: str | epath.Path) -> epath.Path:
    """WORKDIR/checkpoints as an absolute path (orbax requires one; gs:// paths already are)."""
    path = epath.Path(workdir)
    if "://" not in os.fspath(path):
        path = epath.Path(os.path.abspath(os.fspath(path)))
    return path / "checkpoints"


class Checkpointer:
    def __init__(self, workdir: str | epath.Path, max_to_keep: int = 3,
                 async_save: bool = True):
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def incomplete(self) -> list[str]:
        """Names of checkpoint directories whose write never finished (orbax writes to a
        temporary directory and renames it when complete; those are never restored)."""
        if not self.directory.exists():
            return []
        return sorted(p.name for p in self.directory.iterdir() if ".orbax-checkpoint-tmp" in p.name)

    def save(self, step: int, host_state: Any, data_iterator: Any | None, *,
             force: bool = False) -> bool:
        """Starts saving `step` (async unless configured otherwise); a step directory appears
        only once complete. Raises CheckpointWriteError if the write fails."""
        items = {"state": ocp.args.StandardSave(host_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            faults.before_save(step)
            saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except OSError as e:
            raise self._write_error(step, e) from e
        faults.after_save_started(step)
        return saved

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
        """The state at `step` (shaped like `abstract_state`); sets the iterator's position."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except OSError as e:
            raise self._write_error(None, e) from e

    def _write_error(self, step: int | None, error: OSError) -> CheckpointWriteError:
        complete = self.all_steps()
        last = (f"the last complete checkpoint is step {complete[-1]}" if complete
                else "no complete checkpoint exists")
        what = f"step {step}" if step is not None else "the last step"
        return CheckpointWriteError(
            f"could not write the checkpoint of {what} in {self.directory} "
            f"({error.strerror or error}); {last}, and it is intact. Free disk space (or "
            "lower max_checkpoints_to_keep) and run the same command to resume from it.")

    def close(self) -> None:
        self.manager.close()


def holds_parameters_only(workdir: str | epath.Path) -> bool:
    """Whether the newest checkpoint in `workdir` has parameters but no training state to
    resume (no data-iterator item): a `convert --from=hf` output or a run's `best/` folder."""
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        return False
    steps = [p for p in directory.iterdir() if p.name.isdigit()]
    return bool(steps) and not (max(steps, key=lambda p: int(p.name)) / "data").exists()


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""


class ShapeMismatchError(ValueError):
    """A checkpoint whose parameters do not fit the configured model."""


def restore_params(workdir: str | epath.Path, params: nnx.State, step: int | None = None, *,
                   fresh: tuple[str, ...] = (), optional: tuple[str, ...] = ()
                   ) -> tuple[nnx.State, int]:
    """`params` with the values saved by the run in `workdir` (latest step unless given).

    Top-level modules named in `fresh` keep their new values (a fine-tuning task head); those in
    `optional` are restored when the checkpoint has them (e.g. a pooler). Every other parameter
    must be in the checkpoint with the same shape, or ShapeMismatchError names the differences.
    Returns (params, step).
    """
    directory = checkpoint_dir(workdir)
    manager = ocp.CheckpointManager(directory, item_handlers={
        "state": ocp.PyTreeCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()})
    saved_steps = sorted(manager.all_steps())
    problem = None
    if not saved_steps:
        problem = (f"no checkpoint in {directory}: give the workdir of a run that saved at "
                   "least one checkpoint (a train run stopped before its first save has none; "
                   "run train there to make one)")
    elif step is not None and step not in saved_steps:
        problem = (f"no checkpoint of step {step} in {directory}; its saved steps are "
                   f"{', '.join(map(str, saved_steps))}: choose one of them, or leave the step "
                   "unset for the latest")
    if problem:
        manager.close()
        raise FileNotFoundError(problem)
    step = saved_steps[-1] if step is None else step
    saved = manager.item_metadata(step)["state"]["params"]
    saved_names = {param_path_name(k) for k, _ in jax.tree_util.tree_flatten_with_path(saved)[0]}

    def wanted(path, _value) -> bool:
        top = str(path[0])
        if top in fresh:
            return False
        return not (top in optional and param_path_name(path) not in saved_names)

    subset = nnx.filter_state(params, wanted)
    _check_shapes(saved, subset, directory / str(step))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), subset)
    target = {"params": abstract}
    restore_args = jax.tree.map(lambda x: ocp.RestoreArgs(restore_type=np.ndarray,
                                                          dtype=x.dtype), target)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True)))
    manager.close()
    merged = nnx.merge_state(params, restored["state"]["params"])
    unset = [param_path_name(k) for k, v in jax.tree_util.tree_flatten_with_path(merged)[0]
             if isinstance(v, jax.ShapeDtypeStruct)]
    if unset:  # abstract `params` (shapes only) must all come from the checkpoint
        raise ShapeMismatchError(f"{directory / str(step)} lacks parameters the model needs: "
                                 f"{', '.join(unset)}")
    return merged, step


def param_path_name(path: tuple) -> str:
    """'layers/0/attention/value/kernel' for a pytree path, whatever its key types (the
    Variable's own trailing 'value' dropped: an attribute live, a dict key in orbax metadata)."""
    parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    if parts and parts[-1] == "value":
        parts = parts[:-1]
    return "/".join(parts)


def _check_shapes(saved: Any, expected: Any, where: epath.Path) -> None:
    saved_flat = {param_path_name(k): v.shape
                  for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    problems = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
        key = param_path_name(path)
        if key not in saved_flat:
            problems.append(f"{key} is missing")
        elif tuple(saved_flat[key]) != tuple(leaf.shape):
            problems.append(f"{key} has shape {tuple(saved_flat[key])}, the model wants "
                            f"{tuple(leaf.shape)}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if
                                           len(problems) > 5 else "")
        raise ShapeMismatchError(f"checkpoint {where} does not fit the configured model: {shown}."
                                 " Use the same model.* settings as the run that wrote it.")
