"""What the throughput benchmarks share: a config's train step (on one device unless its
parallel.mode says otherwise), a synthetic batch in its objective's layout (no data
pipeline, so only the step is measured), and a median timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np


def train_setup(config: ml_collections.ConfigDict, compiler_options: str | None = None
                ) -> tuple[Any, Any, Any]:
    """(Parallel in the config's parallel.mode, host train state, parameters) of `config`'s
    model, compiled with `compiler_options` (default: the config's parallel.compiler_options)."""
    import jax
    from flax import nnx

    from llmjax.configs import resolve_compiler_options
    from llmjax.objectives import get_objective
    from llmjax.train import optim
    from llmjax.train import state as state_lib
    from llmjax.train.parallel import Parallel

    options = resolve_compiler_options(config, compiler_options)
    graphdef, params = nnx.split(state_lib.build_model(config))
    tx, schedule = optim.make_optimizer(config.optimizer, config.num_train_steps)
    host_state = state_lib.init_state(params, tx, 0)
    parallel = Parallel(config.parallel.mode, graphdef, get_objective(config.objective), tx,
                        schedule, mesh_sizes=config.parallel.mesh,
                        abstract_state=jax.eval_shape(lambda: host_state),
                        compiler_options=options,
                        gradient_allreduce=config.parallel.gradient_allreduce)
    return parallel, host_state, params


def batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    """One global batch for causal_lm, mlm or seq2seq: random tokens in [5, vocab), every
    position real (MLM: round(15%) of each row's positions predicted, as BERT masking does)."""
    rng = np.random.default_rng(seed)
    vocab, b, length = config.model.vocab_size, config.batch_size, config.seq_len

    def ids(n):
        return rng.integers(5, vocab, (b, n)).astype(np.int32)

    ones = np.ones((b, length), np.int32)
    if config.objective == "causal_lm":
        return {"inputs": ids(length), "targets": ids(length), "segment_ids": ones,
                "weights": np.ones((b, length), np.float32)}
    if config.objective == "mlm":  # as data.masking chooses: round(15%) positions per row
        chosen = np.argsort(rng.random((b, length)), axis=1)[:, :round(0.15 * length)]
        weights = np.zeros((b, length), np.float32)
        np.put_along_axis(weights, chosen, 1.0, axis=1)
        return {"inputs": ids(length), "targets": ids(length), "segment_ids": ones,
                "weights": weights}
    if config.objective == "seq2seq":
        t = config.target_seq_len
        return {"inputs": ids(length), "decoder_inputs": ids(t), "targets": ids(t),
                "input_segments": ones, "target_segments": np.ones((b, t), np.int32),
                "weights": np.ones((b, t), np.float32)}
    raise ValueError(f"no synthetic batch for objective={config.objective!r}")


def tokens_per_step(batch: dict[str, np.ndarray]) -> int:
    """Input tokens of a batch (an encoder-decoder counts source and target)."""
    return sum(v.size for k, v in batch.items() if k in ("inputs", "decoder_inputs"))


def median_seconds(run: Callable[[], Any], times: int = 5) -> float:
    """Median seconds of `times` calls of `run`."""
    seconds = []
    for _ in range(times):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))
