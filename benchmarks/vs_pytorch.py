"""Training throughput, side by side on this machine: llmjax vs Hugging Face transformers on
PyTorch for each model family, same shape, batch, AdamW (clip 1.0) and synthetic tokens,
interleaved A B A B so both see the same machine state, each round of each framework in a
fresh process (so neither library's worker threads compete with the other's). Per model it
prints both parameter counts (equal), the median ms/step and tokens/s of each, the
llmjax / PyTorch tokens/s ratio, and each framework's peak resident memory (the largest over
its rounds' processes: parameters, optimizer state, activations, libraries).

    .venv/bin/python benchmarks/vs_pytorch.py [--models=gpt:tiny,gpt:small,bert:mini,t5:tiny]
        [--rounds=3] [--steps=10] [--warmup=2] [--dtype=float32] [--cpu_devices=0]

- gpt:SIZE (configs/gpt.py) vs GPT2LMHeadModel: causal LM, vocabulary 65 (tiny Shakespeare's
  characters), GPT-2's layout in both (biases, tanh GELU, pre-LayerNorm, tied embeddings,
  learned positions). tiny = 4 x 128, context 64, batch 12 (nanoGPT's CPU recipe); small =
  6 x 384, context 256, batch 16.
- bert:SIZE (configs/bert.py) vs BertForMaskedLM: MLM on 15% of positions, vocabulary 8192,
  post-LayerNorm, exact GELU, token-type and position embeddings. mini = 4 x 256, sequence 128,
  batch 32.
- t5:SIZE (configs/t5.py, objective seq2seq) vs T5ForConditionalGeneration: teacher-forced
  seq2seq, vocabulary 8100, RMSNorm, ReLU, relative position buckets, tied embeddings.
  tiny = 3 + 3 x 256, source and target 48, batch 32.

No dropout in either. llmjax runs with its config's defaults (parallel.compiler_options
included); --dtype=bfloat16 sets llmjax's compute dtype (float32 parameters, bfloat16 matmuls
with float32 accumulation); --cpu_devices=N splits the CPU into N JAX devices and runs llmjax
data-parallel over them (parallel.mode=mesh, parallel.cpu_devices=N: one device per core, the
same global batch). PyTorch runs in float32 unless --pytorch_dtype=bfloat16, which
wraps its forward and backward in torch.autocast (its CPU mixed precision). Both frameworks'
processes run with the huge-page malloc tunable the llmjax command sets (llmjax/launch.py;
PyTorch's step time is the same without it). torch and transformers come with the test extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from llmjax.launch import reexec_with_malloc_tunables  # noqa: E402

reexec_with_malloc_tunables()  # as the llmjax command runs (llmjax/launch.py)
from benchmarks import synthetic  # noqa: E402

flags.DEFINE_list("models", ["gpt:tiny", "gpt:small", "bert:mini", "t5:tiny"],
                  "family:size pairs (configs/FAMILY.py sizes).")
flags.DEFINE_integer("rounds", 3, "A B rounds (medians are reported).")
flags.DEFINE_integer("steps", 10, "Timed steps per round and framework.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first, per round and framework (llmjax's "
                     "first compiles).")
flags.DEFINE_string("dtype", "float32", "llmjax compute dtype.")
flags.DEFINE_enum("pytorch_dtype", "float32", ["float32", "bfloat16"],
                  "PyTorch: float32, or bfloat16 under torch.autocast.")
flags.DEFINE_integer("cpu_devices", 0, "llmjax: split the CPU into this many JAX devices "
                     "and train data-parallel over them (0: one device).")
flags.DEFINE_enum("worker", "", ["", "llmjax", "pytorch"], "Internal: time one framework in "
                  "this process and print the result.")
FLAGS = flags.FLAGS

VOCAB = {"gpt": 65, "bert": 8192, "t5": 8100}


def llmjax_config(family: str, size: str):
    from configs import bert, gpt, t5

    if family == "gpt":
        c = gpt.get_config(f"size={size}")
        # GPT-2's own layout (configs/gpt.py drops biases and uses exact GELU, as nanoGPT does)
        c.model.use_bias, c.model.activation = True, "gelu"
    elif family == "bert":
        c = bert.get_config(f"size={size},objective=mlm")
    else:
        c = t5.get_config(f"size={size},objective=seq2seq")
    c.model.vocab_size = VOCAB[family]
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    c.model.dtype = FLAGS.dtype
    if FLAGS.cpu_devices:
        c.parallel.mode, c.parallel.cpu_devices = "mesh", FLAGS.cpu_devices
    return c


def llmjax_stepper(c, batch):
    """(step() that runs one training step and waits for it, parameter count)."""
    import jax

    from llmjax.train import state as state_lib

    parallel, host_state, params = synthetic.train_setup(c)
    holder = {"state": parallel.to_device(host_state)}

    def step():
        holder["state"], _ = parallel.train_step(holder["state"], batch)
        jax.block_until_ready(holder["state"])

    return step, state_lib.count_params(params)


def torch_model(c):
    import transformers as tf

    m = c.model
    if c.objective == "causal_lm":
        return tf.GPT2LMHeadModel(tf.GPT2Config(
            vocab_size=m.vocab_size, n_positions=m.max_len, n_embd=m.emb_dim,
            n_layer=m.num_layers, n_head=m.num_heads, n_inner=m.mlp_dim,
            # GPT-2's tanh GELU through PyTorch's fused kernel (gelu_new, GPT2Config's
            # default, is the same function in six eager ops)
            activation_function="gelu_pytorch_tanh", resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, layer_norm_epsilon=m.norm_epsilon))
    if c.objective == "mlm":
        return tf.BertForMaskedLM(tf.BertConfig(
            vocab_size=m.vocab_size, hidden_size=m.emb_dim, num_hidden_layers=m.num_layers,
            num_attention_heads=m.num_heads, intermediate_size=m.mlp_dim, hidden_act="gelu",
            max_position_embeddings=m.max_len, type_vocab_size=2, layer_norm_eps=m.norm_epsilon,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    return tf.T5ForConditionalGeneration(tf.T5Config(
        vocab_size=m.vocab_size, d_model=m.emb_dim, d_kv=m.emb_dim // m.num_heads,
        d_ff=m.mlp_dim, num_layers=m.num_layers, num_decoder_layers=m.num_layers,
        num_heads=m.num_heads, relative_attention_num_buckets=m.relative_buckets,
        relative_attention_max_distance=m.relative_max_distance, dropout_rate=0.0,
        feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0))


def torch_stepper(c, batch):
    import torch

    torch.manual_seed(0)
    model = torch_model(c).train()
    o = c.optimizer
    opt = torch.optim.AdamW(model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                            eps=o.eps, weight_decay=o.weight_decay)
    t = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch.items() if v.dtype != np.float32}
    if c.objective == "causal_lm":  # GPT2LMHeadModel shifts the labels itself
        inputs = {"input_ids": t["inputs"], "labels": t["inputs"]}
    elif c.objective == "mlm":
        labels = torch.where(torch.from_numpy(batch["weights"] > 0), t["targets"], -100)
        inputs = {"input_ids": t["inputs"], "labels": labels}
    else:
        inputs = {"input_ids": t["inputs"], "decoder_input_ids": t["decoder_inputs"],
                  "labels": t["targets"]}

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=FLAGS.pytorch_dtype == "bfloat16"):
            loss = model(**inputs).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in model.parameters())


def timed(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def peak_host_mib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(name: str, framework: str) -> dict:
    """In a fresh process: build one framework's step, warm up, time --steps steps; with the
    process's peak resident memory (torch is imported only by the PyTorch worker)."""
    if framework == "pytorch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    else:
        from llmjax.train.distributed import use_cpu_devices

        use_cpu_devices(FLAGS.cpu_devices)  # before JAX's first computation
    family, _, size = name.partition(":")
    c = llmjax_config(family, size)
    batch = synthetic.batch(c)
    step, params = (llmjax_stepper if framework == "llmjax" else torch_stepper)(c, batch)
    timed(step, FLAGS.warmup)  # compile / warm up
    return {"ms": timed(step, FLAGS.steps) * 1e3, "params": params,
            "tokens": synthetic.tokens_per_step(batch), "batch": c.batch_size,
            "peak_host_mib": peak_host_mib()}


def in_subprocess(name: str, framework: str) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), f"--worker={framework}",
                          f"--models={name}", f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}",
                          f"--dtype={FLAGS.dtype}", f"--pytorch_dtype={FLAGS.pytorch_dtype}",
                          f"--cpu_devices={FLAGS.cpu_devices}"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.worker:
        print(json.dumps(worker(FLAGS.models[0], FLAGS.worker)))
        return
    for name in FLAGS.models:
        runs = {"llmjax": [], "pytorch": []}
        for _ in range(FLAGS.rounds):
            for framework in runs:
                runs[framework].append(in_subprocess(name, framework))
        ms = {k: float(np.median([r["ms"] for r in v])) for k, v in runs.items()}
        first = runs["llmjax"][0]
        tokens = first["tokens"]
        print(json.dumps({
            "model": name, "dtype": FLAGS.dtype, "pytorch_dtype": FLAGS.pytorch_dtype,
            "cpu_devices": FLAGS.cpu_devices,
            "batch": first["batch"],
            "tokens_per_step": tokens, "params_llmjax": first["params"],
            "params_pytorch": runs["pytorch"][0]["params"],
            "llmjax_ms_per_step": round(ms["llmjax"], 1),
            "pytorch_ms_per_step": round(ms["pytorch"], 1),
            "llmjax_tokens_per_sec": round(tokens / ms["llmjax"] * 1e3),
            "pytorch_tokens_per_sec": round(tokens / ms["pytorch"] * 1e3),
            "llmjax_over_pytorch": round(ms["pytorch"] / ms["llmjax"], 2),
            "llmjax_peak_host_mib": round(max(r["peak_host_mib"] for r in runs["llmjax"])),
            "pytorch_peak_host_mib": round(max(r["peak_host_mib"] for r in runs["pytorch"])),
            "rounds_ms": {k: [round(r["ms"], 1) for r in v] for k, v in runs.items()}}),
            flush=True)


if __name__ == "__main__":
    app.run(main)
