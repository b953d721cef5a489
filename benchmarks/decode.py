"""Decoding speed and KV-cache size of a config's decoder (random parameters, no data).

    .venv/bin/python benchmarks/decode.py --config=configs/gpt.py:size=small,style=deepseek \
        [--batch=8] [--prompt_len=64] [--new_tokens=128] [--vocab_size=65]

Greedy continuation of `batch` random prompts of `prompt_len` tokens by `new_tokens` tokens
through the model's cache (llmjax/decoding/decoder.py, the path `generate` runs), jitted once
and timed over --repeats runs (median). Prints one JSON line: the cache's numbers per token
and layer, its bytes for the whole batch at prompt_len + new_tokens slots, compile time and
new tokens per second. Compare attention layouts with the same sizes, e.g. style=llama
(grouped-query) against style=deepseek (latent attention).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from llmjax.launch import reexec_with_malloc_tunables  # noqa: E402

reexec_with_malloc_tunables()  # as the llmjax command runs (llmjax/launch.py)
config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "gpt.py"),
                                "Config file.")
flags.DEFINE_integer("batch", 8, "Prompts decoded together.")
flags.DEFINE_integer("prompt_len", 64, "Tokens per prompt.")
flags.DEFINE_integer("new_tokens", 128, "Tokens generated per prompt.")
flags.DEFINE_integer("vocab_size", 65, "Vocabulary size (the tokenizer's, normally).")
flags.DEFINE_integer("repeats", 5, "Timed runs (the median is printed).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from llmjax.decoding.decoder import continue_prompts
    from llmjax.train import state as state_lib

    c = FLAGS.config
    c.model.vocab_size = FLAGS.vocab_size
    slots = FLAGS.prompt_len + FLAGS.new_tokens
    c.model.max_len = max(c.model.max_len, slots)
    graphdef, params = nnx.split(state_lib.build_model(c))
    model = nnx.merge(graphdef, params)
    cache = jax.eval_shape(lambda: model.init_cache(FLAGS.batch, slots))
    layers = cache["layers"]
    per_token = sum(int(np.prod(a.shape[2:])) for layer in layers for a in layer.values())
    cache_bytes = sum(a.size * a.dtype.itemsize for layer in layers for a in layer.values())
    prompts = jnp.asarray(np.random.RandomState(0).randint(
        1, FLAGS.vocab_size, (FLAGS.batch, FLAGS.prompt_len)), jnp.int32)

    def run():
        return continue_prompts(graphdef, params, prompts, jnp.ones_like(prompts),
                                jax.random.PRNGKey(0), cache_len=slots,
                                max_new_tokens=FLAGS.new_tokens, eos_id=-1)

    start = time.perf_counter()
    jax.block_until_ready(run())
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    print(json.dumps({
        "device": jax.devices()[0].device_kind, "dtype": c.model.dtype,
        "layers": c.model.num_layers, "batch": FLAGS.batch, "prompt_len": FLAGS.prompt_len,
        "new_tokens": FLAGS.new_tokens,
        "cache_numbers_per_token_per_layer": per_token // len(layers),
        "cache_mib": round(cache_bytes / 2**20, 3), "compile_s": round(compile_s, 2),
        "seconds": round(seconds, 4),
        "new_tokens_per_sec": round(FLAGS.batch * FLAGS.new_tokens / seconds, 1)}))


if __name__ == "__main__":
    app.run(main)
