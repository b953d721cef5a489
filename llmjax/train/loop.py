"""train_and_evaluate: the plain Python training loop and its periodic actions
(log, eval, checkpoint, stop) — what `llmjax train` runs."""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from llmjax import configs, launch, validation
from llmjax.data import pipeline
from llmjax.evaluation import choices
from llmjax.evaluation.suite import EvalSuite, host_eval_class
from llmjax.models import lora
from llmjax.objectives import get_objective
from llmjax.objectives.base import Regularizers
from llmjax.train import best as best_lib
from llmjax.train import checkpoint, faults, flops, optim
from llmjax.train import state as state_lib
from llmjax.train import teacher as teacher_lib
from llmjax.train.parallel import Parallel
from llmjax.train.profile import StepProfile
from llmjax.train.start import (
    check_init_compatible,
    check_resume_compatible,
    initial_params,
    prepare_workdir,
    resolve_vocab,
)
from llmjax.train.step import loss_terms, make_eval_step
from llmjax.train.writer import MetricWriter


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; nothing after the last good checkpoint is saved."""


class _StopSignal:
    """SIGTERM/SIGINT -> finish the step, checkpoint, exit cleanly.

    One process: our own handler (jax gives a single process no preemption notice). Several
    processes: SIGTERM belongs to jax's preemption service, which agrees on one step for all
    hosts (`reached_preemption_sync_point`); a SIGINT is passed on to it as a SIGTERM."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}
        self.multi_process = jax.process_count() > 1

    def __enter__(self):
        signals = (signal.SIGINT,) if self.multi_process else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.multi_process:
            signal.raise_signal(signal.SIGTERM)  # jax's preemption notifier takes it from here
        else:
            self.received = signum

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint and stop after `step`; the same answer on every host. Must be
        called after every step (jax's sync protocol counts on it)."""
        if self.multi_process:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.received = self.received or signal.SIGTERM
        return self.received is not None

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
    """Train metrics over a log interval: loss and accuracy weighted by their token counts;
    skipped (non-finite) updates are counted and left out of the means."""
    host = jax.device_get(pending)
    weights = np.array([float(m["weight"]) for m in host])
    applied = np.array([1.0 - float(m.get("skipped_updates", 0.0)) for m in host])
    out = {}
    for key in host[0]:
        if key == "weight":
            continue
        values = np.array([float(m[key]) for m in host])
        if key in ("learning_rate",):
            out[key] = values[-1]
        elif key == "skipped_updates":
            out[key] = float(values.sum())
        elif key == "grad_norm":
            out[key] = float((values * applied).sum() / max(applied.sum(), 1.0))
        else:
            out[key] = float((values * weights).sum() / max(weights.sum(), 1e-9))
    return out


def _prepare_data(config: ml_collections.ConfigDict, workdir: epath.Path, objective):
    """(tokenizer, training iterator, eval batches); resolves the config's vocabulary size and
    objective-specific keys and checks that a resumed workdir holds the same model."""
    tokenizer, origin = pipeline.get_tokenizer(config, str(workdir))
    logging.info("tokenizer: %s, %d tokens (%s)", tokenizer.kind, tokenizer.vocab_size, origin)
    resolve_vocab(config, tokenizer.vocab_size)
    if hasattr(objective, "resolve_config"):  # e.g. the classification label set
        objective.resolve_config(config)
    check_resume_compatible(config, workdir)
    train_iter = iter(pipeline.train_dataset(config, tokenizer, objective))
    eval_data = pipeline.eval_batches(config, tokenizer, objective)
    return tokenizer, train_iter, eval_data


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | epath.Path, *,
                       stop_at_step: int | None = None) -> dict[str, Any]:
    """Trains per `config` in `workdir` (resuming from its latest checkpoint) and returns the
    last eval metrics ({'eval/loss': ..., ...})."""
    config = ml_collections.ConfigDict(config.to_dict(), type_safe=True)  # own, unlocked copy
    workdir = epath.Path(workdir)
    mode = config.parallel.mode
    shards = Parallel.num_data_shards(mode, config.parallel.mesh)
    validation.validate(config, num_data_shards=shards)
    if stop_at_step is not None and stop_at_step < 1:
        raise configs.ConfigError(f"--stop_at_step={stop_at_step}: give a step of at least 1 "
                                  "(a checkpoint is saved there), or leave it out to train "
                                  "all num_train_steps")
    objective = get_objective(config.objective)
    check_init_compatible(config)
    if config.init.hf_path:  # the architecture comes from the Hugging Face config
        from llmjax.convert.hf import apply_hf_model_config

        apply_hf_model_config(config)
        validation.validate(config, num_data_shards=shards)
    if checkpoint.holds_parameters_only(workdir):
        raise configs.ConfigError(
            f"--workdir={workdir} holds parameters only (a converted Hugging Face model or a "
            "run's best/ checkpoint), no training state to resume: fine-tune from it into a new "
            f"workdir with --config.init.workdir={workdir}")
    created = not workdir.exists()
    prepare_workdir(workdir)
    try:  # every check and all data loading come before the first write to the workdir
        tokenizer, train_iter, eval_data = _prepare_data(config, workdir, objective)
        evals = EvalSuite(config, tokenizer, objective, eval_data)
        if hasattr(objective, "release_reference"):  # DPO: every split's examples are made
            objective.release_reference()
        best_metric = _best_metric(config, objective, evals)
        if config.lora.rank:  # lora.targets must match the model's layers (shapes only)
            state_lib.abstract_model(config)
        distill_teacher = (teacher_lib.load_teacher(config, tokenizer)
                           if config.distill.teacher_workdir else None)
    except Exception:
        if created and not any(workdir.iterdir()):
            workdir.rmdir()  # a run that never started leaves no empty workdir behind
        raise
    is_primary = jax.process_index() == 0
    if is_primary:
        if not (workdir / "tokenizer" / "tokenizer_config.json").exists():
            tokenizer.save(workdir / "tokenizer")
        (workdir / "config.json").write_text(configs.to_json(config))
    if evals.floor is not None:
        logging.info("best achievable eval loss on this data: %.4f nats/token", evals.floor)

    # A fresh mesh run needs only shapes here: its state is created already sharded.
    sharded_init = mode == "mesh" and not (config.init.workdir or config.init.hf_path)
    if sharded_init:
        graphdef, params = state_lib.abstract_model(config)
    else:
        graphdef, params = nnx.split(state_lib.build_model(config))
    num_params = state_lib.count_params(params)
    trainable = lora.trainable(objective) if config.lora.rank else None  # None: everything
    # DeepSeek-V3's balancing: router biases moved by the sign of each expert's excess load
    bias_rate = (config.model.moe_bias_update_rate
                 if config.model.num_experts and config.model.moe_router_bias else 0.0)
    optimizer, schedule = optim.make_optimizer(config.optimizer, config.num_train_steps,
                                               trainable=trainable, router_bias_rate=bias_rate)
    abstract = jax.eval_shape(lambda p: state_lib.init_state(p, optimizer, config.seed), params)
    parallel = Parallel(mode, graphdef, objective, optimizer, schedule,
                        config.optimizer.accumulation_steps, config.skip_nonfinite_updates,
                        mesh_sizes=config.parallel.mesh, abstract_state=abstract,
                        compiler_options=configs.resolve_compiler_options(config),
                        regularizers=Regularizers(config.label_smoothing, config.z_loss,
                                                 config.model.moe_balance_loss_weight,
                                                 config.model.moe_z_loss_weight,
                                                 moe_bias_update=bias_rate > 0,
                                                 mtp_loss=config.model.mtp_loss_weight,
                                                 distill_alpha=config.distill.alpha,
                                                 distill_temperature=config.distill.temperature),
                        trainable=trainable,
                        gradient_allreduce=config.parallel.gradient_allreduce,
                        teacher=distill_teacher[:2] if distill_teacher else None)
    logging.info("parallel: %s", parallel.describe())
    ckpt = checkpoint.Checkpointer(workdir, config.max_checkpoints_to_keep,
                                   config.async_checkpointing)
    start = ckpt.latest_step()
    for name in ckpt.incomplete():
        logging.warning("ignoring %s in %s: its write never finished (the process was killed "
                        "mid-save); %s", name, ckpt.directory,
                        f"resuming from step {start}, the newest complete checkpoint"
                        if start is not None else "no complete checkpoint exists")
    if start is None:
        if sharded_init:
            state = parallel.init_sharded(lambda: state_lib.init_state(
                nnx.split(state_lib.build_model(config))[1], optimizer, config.seed))
        else:
            state = parallel.to_device(state_lib.init_state(initial_params(config, params),
                                                            optimizer, config.seed))
        start = 0
    else:
        state = ckpt.restore(start, parallel.abstract_for_restore(abstract), train_iter)
        if mode != "mesh":  # mesh: restored straight onto the devices, sharded
            state = parallel.to_device(state)
        logging.info("resumed from %s at step %d", ckpt.directory, start)
    evals.attach_model(graphdef)
    writer = MetricWriter(workdir)
    writer.truncate_after(start)
    best = None
    if best_metric:
        best = best_lib.BestCheckpoint(
            workdir, best_metric, best_lib.lower_is_better(best_metric,
                                                           config.checkpoint_best_mode),
            start, config, tokenizer)
    cfg = state_lib.model_config(config)
    vocab_positions = (objective.vocab_positions(config.seq_len)
                       if hasattr(objective, "vocab_positions") else None)
    length = (objective.example_length(config) if hasattr(objective, "example_length")
              else None)
    tokens_per_step, flops_per_step = flops.step_cost(config, cfg, params, vocab_positions,
                                                      length)
    if distill_teacher:  # + the teacher's forward pass: a third of its training FLOPs
        _, teacher_params, teacher_config = distill_teacher
        flops_per_step += config.batch_size * flops.flops_per_example(
            state_lib.model_config(teacher_config), teacher_params, config.seq_len) / 3
        logging.info("distilling from %s (%s parameters): alpha=%g, temperature=%g",
                     config.distill.teacher_workdir,
                     f"{state_lib.count_params(teacher_params):,}", config.distill.alpha,
                     config.distill.temperature)
    peak, peak_origin = flops.peak_flops_per_device(config.model.dtype,
                                                    config.peak_flops_per_device)
    peak_total = peak * jax.device_count() if mode != "single" else peak
    size = f"{num_params:,} parameters"
    if config.model.num_experts:  # a mixture: what a token runs through too
        active = state_lib.count_active_params(params, cfg)
        size += f" ({active:,} active per token)"
    logging.info("model: %s, %s; %s training FLOPs/step; peak %.3g FLOP/s (%s)",
                 config.model.arch, size, f"{flops_per_step:.3g}", peak_total, peak_origin)
    missing = launch.missing_malloc_tunables(dict(os.environ))
    if jax.default_backend() == "cpu" and missing:
        logging.info("GLIBC_TUNABLES lacks %s: each CPU step will page-fault its buffers in "
                     "anew (the llmjax command sets it; from Python, export it before "
                     "starting: README, CLI)", ":".join(missing))

    last_step = config.num_train_steps if stop_at_step is None else min(
        stop_at_step, config.num_train_steps)
    if start >= config.num_train_steps:
        logging.info("%s is already at step %d, the last to train here (num_train_steps=%d): "
                     "nothing to do; raise num_train_steps to train further", workdir, start,
                     config.num_train_steps)
    elif start >= last_step:
        logging.info("%s is already at step %d, at or past --stop_at_step=%d: nothing to do; "
                     "give a later step to train further", workdir, start, stop_at_step)

    def is_eval_step(step: int) -> bool:
        return step % config.eval_every_steps == 0 or step == config.num_train_steps

    def stalled(step: int) -> bool:
        """Early stopping: the last early_stopping_evals evals up to `step` came after the
        best one (all evals, when none had a finite value). Counted from the eval steps, so
        a resumed run stops where an uninterrupted one would."""
        if not config.early_stopping_evals:
            return False
        after, every = best.step or 0, config.eval_every_steps
        evals = step // every - after // every + (
            after < config.num_train_steps <= step and config.num_train_steps % every != 0)
        return evals >= config.early_stopping_evals

    if start < last_step and stalled(start):
        logging.info("%s stopped early at step %d (%s has not improved for %d evals; %s): "
                     "nothing to do; raise early_stopping_evals to train further", workdir,
                     start, best.metric, config.early_stopping_evals, best.summary())
        last_step = start
    eval_metrics: dict[str, Any] = {}
    last_saved = start if start else None
    pending: list[dict] = []
    progress = _progress(config, start, is_primary)
    step = start
    interval_start, interval_steps = time.perf_counter(), 0

    def save(step: int) -> None:
        nonlocal last_saved
        _check_finite(pending, step, last_saved, ckpt)
        ckpt.save(step, parallel.to_host(state), train_iter, force=True)
        last_saved = step

    weight_keys = set(loss_terms(objective).values())  # the batch keys of the loss weights
    profile = StepProfile(config.profile, workdir)
    nan_step = faults.planned("nan_at_step")  # read once, off the hot path; None outside tests
    with _StopSignal() as stop:
        while step < last_step:
            batch = next(train_iter)
            profile.before_step(step + 1, state)
            if step + 1 == nan_step:
                batch = faults.poison_batch(batch, weight_keys)
            state, metrics = parallel.train_step(state, batch)
            pending.append(parallel.unreplicate_metrics(metrics))
            step += 1
            interval_steps += 1
            profile.after_step(step, state)
            if step == start + 1:  # the first step includes compilation: time it apart
                jax.block_until_ready(state)
                logging.info("first step (compile + run) took %.1f s",
                             time.perf_counter() - interval_start)
                interval_start, interval_steps = time.perf_counter(), 0
            is_last = step == last_step
            if step % config.log_every_steps == 0 or is_last:
                _check_finite(pending, step, last_saved, ckpt)
                train = _mean_metrics(pending)
                pending = []
                elapsed = time.perf_counter() - interval_start
                if interval_steps:
                    train["tokens_per_sec"] = tokens_per_step * interval_steps / elapsed
                    train["mfu"] = flops_per_step * interval_steps / elapsed / peak_total
                writer.write(step, {f"train/{k}": v for k, v in train.items()})
                progress.set_postfix(loss=f"{train['loss']:.4f}", refresh=False)
                if progress.disable and is_primary:
                    logging.info("step %d: %s", step, _format(train))
                interval_start, interval_steps = time.perf_counter(), 0
            stopping_early = False
            if is_eval_step(step):
                eval_metrics = evals(parallel, parallel.params(state), step)
                writer.write(step, eval_metrics)
                writer.write_samples(step, evals.samples)
                if is_primary:
                    logging.info("step %d: %s", step, _format(eval_metrics))
                if best is not None:
                    best.update(step, eval_metrics,
                                parallel.to_host({"params": parallel.params(state)})["params"])
                    stopping_early = stalled(step)
                interval_start, interval_steps = time.perf_counter(), 0
            stopping = stop.should_stop(step)
            if step % config.checkpoint_every_steps == 0 or is_last or stopping or stopping_early:
                save(step)
            progress.update(1)
            if stopping_early:
                logging.info("stopping early at step %d: %s has not improved for %d evals; %s",
                             step, best.metric, config.early_stopping_evals, best.summary())
                break
            if stopping:
                logging.warning("received signal %d: saved a checkpoint at step %d in %s; run "
                                "the same command to resume", stop.received, step, ckpt.directory)
                break
    profile.stop(state)  # a run that ended inside the traced steps
    progress.close()
    ckpt.wait()
    ckpt.close()
    if best is not None:
        best.close()
    if is_primary:
        writer.plot()
    writer.close()
    if step >= config.num_train_steps:
        logging.info("finished %d steps in %s", step, workdir)
    elif stop_at_step is not None and step == stop_at_step:
        logging.info("stopped at step %d (--stop_at_step); run train again to continue", step)
    return eval_metrics


def _best_metric(config: ml_collections.ConfigDict, objective, evals: EvalSuite
                 ) -> str | None:
    """`checkpoint_best_metric` as reported (`eval/...`, `eval_NAME/...`), checked against the
    names this run's eval reports (from the eval step's shapes: nothing is compiled)."""
    if not config.checkpoint_best_metric:
        return None
    graphdef, params = state_lib.abstract_model(config)
    host_eval = host_eval_class(objective)
    extra = (("best_achievable_loss",) if evals.floor is not None else ()) + (
        host_eval.metric_names(config) if host_eval is not None else ())
    names = best_lib.eval_metric_names(make_eval_step(graphdef, objective), params,
                                       evals.eval_data[0], tuple(loss_terms(objective)), extra,
                                       tuple(evals.extra))
    names += [f"eval_{name}/{m}" for name in evals.choice_sets
              for m in choices.ChoiceEval.metric_names]
    return best_lib.check_metric(config.checkpoint_best_metric, sorted(names))


def _check_finite(pending: list[dict], step: int, last_saved: int | None,
                  ckpt: checkpoint.Checkpointer) -> None:
    """Raises NonFiniteLossError naming the first bad update among `pending` (the metrics of
    the updates up to `step`)."""
    for i, m in enumerate(jax.device_get(pending)):
        loss, grad_norm = float(m["loss"]), float(m["grad_norm"])
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            bad_step = step - len(pending) + 1 + i
            where = (f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
                     if last_saved is not None else "no checkpoint was saved")
            raise NonFiniteLossError(
                f"non-finite training loss ({loss}) or gradient norm ({grad_norm}) at step "
                f"{bad_step}; {where} (nothing after it was saved). Lower "
                "optimizer.learning_rate, raise optimizer.warmup_steps, set "
                "optimizer.grad_clip_norm, or set skip_nonfinite_updates=True to skip such "
                "updates.")


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


def _progress(config: ml_collections.ConfigDict, start: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=config.num_train_steps, initial=start, unit="step", dynamic_ncols=True,
                disable=not (enabled and config.progress_bar), mininterval=1.0)
