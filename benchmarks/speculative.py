"""Speculative decoding's speed-up: a run's greedy decoding with and without a draft run.

    .venv/bin/python benchmarks/speculative.py --target=runs/spec-target \
        --draft=runs/spec-draft|mtp [--draft_tokens=2,4,6] [--new_tokens=256] [--prompts=8] \
        [--prompt_chars=64] [--batch=1] [--temperature=0] [--rounds=3] [--dtype=float32]

With --draft=mtp the draft is the target's own first multi-token-prediction module
(model.mtp_depth >= 1): one draft token per call of the target.

Prompts are `prompt_chars`-character windows of the last 10% of tiny Shakespeare (the val
split of the Shakespeare recipes). Each is decoded `new_tokens` tokens (no stop at <eos>, so
every variant does the same work), `batch` prompts at a time, through the jitted functions
`generate` runs (llmjax/decoding/decoder.py): plain decoding over the KV cache, and
speculative decoding with `draft_tokens` K per call of the target. The variants are timed in
turn on every batch (plain, K1, K2, ..., repeated `rounds` times; each compiled beforehand)
and the medians printed as one JSON line each: seconds per batch, new tokens per second, the
speed-up over plain decoding, target calls per new token, and (greedy) the share of rows
equal to plain decoding's and the median number of tokens before a row's first difference
(in bfloat16, scoring K + 1 tokens in one call rounds otherwise than one at a time, and a
near tie can then go the other way; in float32 the rows are equal).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from llmjax.launch import reexec_with_malloc_tunables  # noqa: E402

reexec_with_malloc_tunables()  # as the llmjax command runs (llmjax/launch.py)
flags.DEFINE_string("target", None, "The run to decode (workdir or Hugging Face folder).")
flags.DEFINE_string("draft", None, "The draft run, over the target's tokenizer; or mtp: the "
                    "target's own multi-token-prediction module (one draft per call).")
flags.DEFINE_list("draft_tokens", ["2", "4", "6"], "Values of K to time.")
flags.DEFINE_integer("new_tokens", 256, "Tokens generated per prompt.")
flags.DEFINE_integer("prompts", 8, "Prompts decoded.")
flags.DEFINE_integer("prompt_chars", 64, "Characters per prompt.")
flags.DEFINE_integer("batch", 1, "Prompts decoded together.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy (outputs compared with plain decoding).")
flags.DEFINE_integer("rounds", 3, "Times every batch is decoded by every variant.")
flags.DEFINE_string("dtype", None, "Compute dtype of both models (default: each run's).")
flags.DEFINE_string("text", os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare",
                                         "input.txt"), "Text the prompts are cut from.")
flags.mark_flags_as_required(["target", "draft"])
FLAGS = flags.FLAGS


def _prompts(tokenizer) -> list[np.ndarray]:
    """`prompts` windows of the text's last 10%, evenly spaced, each <bos> + its tokens."""
    text = open(FLAGS.text, encoding="utf-8").read()
    val = text[int(len(text) * 0.9):]
    starts = np.linspace(0, len(val) - FLAGS.prompt_chars, FLAGS.prompts).astype(int)
    return [np.concatenate([[tokenizer.bos_id],
                            tokenizer.encode_array(val[s:s + FLAGS.prompt_chars])])
            for s in starts]


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import llmjax
    from llmjax.api import MTP_DRAFT, check_draft
    from llmjax.decoding.decoder import continue_prompts, self_speculate_prompts, speculate_prompts
    from llmjax.decoding.speculative import cache_slots

    target = llmjax.load(FLAGS.target, config=_config(FLAGS.target))
    graphdef, params = nnx.split(target.model)
    self_draft = FLAGS.draft == MTP_DRAFT
    if not self_draft:
        draft = llmjax.load(FLAGS.draft, config=_config(FLAGS.draft))
        check_draft(target, draft)
        draft_graphdef, draft_params = nnx.split(draft.model)
    ids = _prompts(target.tokenizer)
    if len({len(x) for x in ids}) != 1:
        raise ValueError("prompts of different token lengths: use a char or byte tokenizer")
    batches = [jnp.asarray(np.stack(ids[i:i + FLAGS.batch]), jnp.int32)
               for i in range(0, len(ids) - FLAGS.batch + 1, FLAGS.batch)]
    length, new = batches[0].shape[1], FLAGS.new_tokens
    sampling = {"temperature": FLAGS.temperature}
    rng = jax.random.PRNGKey(0)

    def plain(prompts):
        tokens = continue_prompts(graphdef, params, prompts, jnp.ones_like(prompts), rng,
                                  cache_len=length + new, max_new_tokens=new, eos_id=-1,
                                  **sampling)
        return tokens, jnp.asarray(new - 1)

    def speculative(k):
        slots = cache_slots(length, new, k)
        return lambda prompts: speculate_prompts(
            graphdef, params, draft_graphdef, draft_params, prompts, jnp.ones_like(prompts),
            rng, cache_len=slots, draft_tokens=k, max_new_tokens=new, eos_id=-1, **sampling)

    def mtp(prompts):
        return self_speculate_prompts(
            graphdef, params, prompts, jnp.ones_like(prompts), rng,
            cache_len=cache_slots(length, new, 1), max_new_tokens=new, eos_id=-1,
            **sampling)

    variants = {"plain": plain}
    if self_draft:
        variants["mtp"] = mtp
    else:
        variants.update({f"K={k}": speculative(int(k)) for k in FLAGS.draft_tokens})
    compile_s = {}
    for name, fn in variants.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(batches[0]))
        compile_s[name] = time.perf_counter() - start
    seconds = {name: [] for name in variants}
    calls = {name: [] for name in variants}
    prefix = {name: [] for name in variants}  # tokens equal to plain decoding's, from the start
    for _ in range(FLAGS.rounds):
        for prompts in batches:
            reference = None
            for name, fn in variants.items():  # in turn: drift hits every variant alike
                start = time.perf_counter()
                tokens, n = jax.block_until_ready(fn(prompts))
                seconds[name].append(time.perf_counter() - start)
                calls[name].append(int(n) + 1)  # and the prompt's call
                reference = np.asarray(tokens) if reference is None else reference
                same = np.cumprod(np.asarray(tokens) == reference, axis=1).sum(axis=1)
                prefix[name].extend(same.tolist())
    base = float(np.median(seconds["plain"]))
    for name in variants:
        median = float(np.median(seconds[name]))
        row = {"variant": name, "target_params": _count(params),
               "draft_params": _count(params["mtp"] if self_draft else draft_params),
               "batch": FLAGS.batch,
               "prompt_tokens": int(length), "new_tokens": new,
               "temperature": FLAGS.temperature, "compile_s": round(compile_s[name], 2),
               "seconds": round(median, 4),
               "new_tokens_per_sec": round(FLAGS.batch * new / median, 1),
               "speedup": round(base / median, 3),
               "target_calls_per_token": round(float(np.mean(calls[name])) / new, 3)}
        if FLAGS.temperature == 0.0:  # the first difference: a near tie rounded otherwise
            row["rows_equal_plain"] = float(np.mean(np.asarray(prefix[name]) == new))
            row["median_tokens_before_a_difference"] = float(np.median(prefix[name]))
        row["dtype"] = target.config.model.dtype
        print(json.dumps(row), flush=True)


def _config(workdir: str):
    """The run's config (a workdir's or a Hugging Face folder's), with --dtype's compute
    dtype."""
    from llmjax import workdir_config

    config = workdir_config.get_config(workdir)
    if FLAGS.dtype:
        config.model.dtype = FLAGS.dtype
    return config


def _count(params) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(params)))


if __name__ == "__main__":
    app.run(main)
