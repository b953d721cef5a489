"""Training time to a validation loss, llmjax vs Hugging Face transformers on PyTorch, on tiny
Shakespeare at the character level (nanoGPT's CPU recipe, experiments/shakespeare_char):

    .venv/bin/python benchmarks/time_to_loss.py [--target=1.9] [--steps=3000] [--seeds=0]

Both train the recipe's model in GPT-2's layout, which GPT2LMHeadModel imposes (biases;
exact GELU, pre-LayerNorm, tied embeddings, learned positions): 4 x 128, 4 heads, context 64,
batch 12, AdamW lr 1e-3 (b2 0.99, weight decay 0.1 on matrices and embeddings), clip 1.0,
warmup 100 then cosine to 1e-4 at --steps (the recipe's 2000 steps end at val loss 1.91 in
both, so the default runs longer to cross 1.9). Every --eval_every steps both evaluate on the
whole val split (every character once, non-overlapping 64-character windows). Reported per
framework and seed: the first evaluated step at or below --target, the training seconds to it
(evaluation time and llmjax's first, compiling step excluded) and the final val loss; with
several seeds, the medians and the median ratio. The frameworks alternate which runs first
from one seed to the next (A B, B A, ...). --dtype=bfloat16 sets llmjax's compute dtype.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from llmjax.launch import reexec_with_malloc_tunables  # noqa: E402

reexec_with_malloc_tunables()  # as the llmjax command runs (llmjax/launch.py)
flags.DEFINE_float("target", 1.9, "Validation loss to reach (nats per character).")
flags.DEFINE_integer("steps", 3000, "Training steps (the cosine decay ends here).")
flags.DEFINE_integer("eval_every", 250, "Steps between evaluations.")
flags.DEFINE_list("seeds", ["0"], "Seeds.")
flags.DEFINE_string("dtype", "float32", "llmjax compute dtype (PyTorch stays float32).")
flags.DEFINE_integer("cpu_devices", 0, "llmjax: split the CPU into this many JAX devices and "
                     "train data-parallel over them (0: one device).")
flags.DEFINE_string("data", os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare",
                                         "input.txt"), "tiny shakespeare input.txt")
FLAGS = flags.FLAGS
CONTEXT, BATCH = 64, 12


def first_at_target(evals: list[tuple[int, float, float]]) -> dict:
    """evals: (step, val loss, training seconds so far) -> the first at or below target."""
    hit = next((e for e in evals if e[1] <= FLAGS.target), None)
    return {"step_at_target": hit and hit[0], "train_s_to_target": hit and round(hit[2], 1),
            "final_val_loss": round(evals[-1][1], 4), "train_s_total": round(evals[-1][2], 1)}


def run_llmjax(seed: int) -> dict:
    from experiments.shakespeare_char.config import get_config
    from llmjax.train.loop import train_and_evaluate
    from llmjax.train.writer import read_metrics

    c = get_config(f"seed={seed},data={os.path.abspath(FLAGS.data)}")
    c.model.use_bias = True  # GPT-2's layout, as GPT2LMHeadModel has it
    c.model.dtype = FLAGS.dtype
    if FLAGS.cpu_devices:
        c.parallel.mode, c.parallel.cpu_devices = "mesh", FLAGS.cpu_devices
    c.num_train_steps = FLAGS.steps
    c.log_every_steps = c.eval_every_steps = FLAGS.eval_every
    c.checkpoint_every_steps = FLAGS.steps
    c.progress_bar = False
    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(c, workdir)
        rows = read_metrics(workdir)
    evals, seconds, previous = [], 0.0, 1  # the first step (compilation) is not timed
    for row in rows:
        if "train/tokens_per_sec" in row:
            steps = row["step"] - previous
            seconds += steps * BATCH * CONTEXT / row["train/tokens_per_sec"]
            previous = row["step"]
        if "eval/loss" in row:
            evals.append((row["step"], row["eval/loss"], seconds))
    return first_at_target(evals)


def run_pytorch(seed: int) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    text = open(FLAGS.data, encoding="utf-8").read()
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    data = np.array([index[ch] for ch in text], np.int64)
    train, val = data[: int(len(data) * 0.9)], data[int(len(data) * 0.9):]
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(chars), n_positions=CONTEXT, n_embd=128, n_layer=4, n_head=4,
        n_inner=512, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=1e-5))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-3,
                            betas=(0.9, 0.99))

    def learning_rate(step: int) -> float:  # warmup 100, cosine to 1e-4 (as llmjax's schedule)
        if step < 100:
            return 1e-3 * step / 100
        ratio = (step - 100) / (FLAGS.steps - 100)
        return 1e-4 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    starts = range(0, len(val) - 1, CONTEXT)  # every val character once, last window partial

    def evaluate() -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for i in starts:
                x = torch.from_numpy(val[i:i + CONTEXT][None])
                y = torch.from_numpy(val[i + 1:i + 1 + CONTEXT][None])
                logits = model(x[:, :y.shape[1]]).logits
                total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
                count += y.numel()
        model.train()
        return total / count

    evals, seconds = [], 0.0
    for step in range(FLAGS.steps):
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = learning_rate(step)
        ix = torch.randint(len(train) - CONTEXT, (BATCH,)).tolist()
        x = torch.from_numpy(np.stack([train[i:i + CONTEXT] for i in ix]))
        y = torch.from_numpy(np.stack([train[i + 1:i + 1 + CONTEXT] for i in ix]))
        loss = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seconds += time.perf_counter() - start
        if (step + 1) % FLAGS.eval_every == 0 or step + 1 == FLAGS.steps:
            evals.append((step + 1, evaluate(), seconds))
    return first_at_target(evals)


def main(argv):
    del argv
    import torch

    from llmjax.log_filter import quiet_library_logs
    from llmjax.train.distributed import use_cpu_devices

    use_cpu_devices(FLAGS.cpu_devices)  # before JAX's first computation, as the command does
    if not os.path.exists(FLAGS.data):
        raise SystemExit(f"{FLAGS.data} not found: pass --data=PATH/TO/input.txt")
    quiet_library_logs()
    torch.set_num_threads(os.cpu_count() or 1)
    runners = {"llmjax": run_llmjax, "pytorch": run_pytorch}
    seconds, ratios = {"llmjax": [], "pytorch": []}, []
    for i, seed in enumerate(map(int, FLAGS.seeds)):
        # A B, B A, ...: a machine that drifts during the run favours neither framework
        order = ("llmjax", "pytorch") if i % 2 == 0 else ("pytorch", "llmjax")
        results = {name: runners[name](seed) for name in order}
        for name, r in results.items():
            print(json.dumps({"framework": name, "seed": seed, "target": FLAGS.target,
                              "dtype": FLAGS.dtype if name == "llmjax" else "float32",
                              **({"cpu_devices": FLAGS.cpu_devices} if name == "llmjax"
                                 else {}), **r}),
                  flush=True)
            if r["train_s_to_target"]:
                seconds[name].append(r["train_s_to_target"])
        a, b = results["llmjax"]["train_s_to_target"], results["pytorch"]["train_s_to_target"]
        if a and b:
            ratios.append(a / b)
            print(json.dumps({"seed": seed, "llmjax_time_over_pytorch": round(a / b, 2)}))
    if len(ratios) > 1:
        print(json.dumps({"seeds": len(ratios), **{f"median_train_s_{name}": round(
            float(np.median(s)), 1) for name, s in seconds.items()},
            "median_llmjax_time_over_pytorch": round(float(np.median(ratios)), 2)}))


if __name__ == "__main__":
    app.run(main)
