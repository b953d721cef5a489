"""Reference for benchmarks/shakespeare_char.py: the same nanoGPT CPU recipe in plain PyTorch
(nanoGPT's model and training loop restated), evaluated the same way (every val character once,
non-overlapping 64-character windows). It answers: what does the recipe itself reach here?

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchenv/bin/python benchmarks/torch_nanogpt_shakespeare.py --seeds=0,1,2

PyTorch is not a dependency of llmjax; this script runs in its own environment.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare", "input.txt")
LAYERS, HEADS, DIM, CONTEXT, BATCH, STEPS = 4, 4, 128, 64, 12, 2000


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(DIM, bias=False), nn.LayerNorm(DIM, bias=False)
        self.c_attn = nn.Linear(DIM, 3 * DIM, bias=False)
        self.attn_proj = nn.Linear(DIM, DIM, bias=False)
        self.c_fc = nn.Linear(DIM, 4 * DIM, bias=False)
        self.mlp_proj = nn.Linear(4 * DIM, DIM, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(DIM, dim=2)
        q, k, v = (z.view(b, t, HEADS, d // HEADS).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, DIM), nn.Embedding(CONTEXT, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(DIM, bias=False)
        self.lm_head = nn.Linear(DIM, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # tied
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)
        for name, p in self.named_parameters():
            if name.endswith("_proj.weight"):  # residual projections, as nanoGPT's c_proj
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * LAYERS))

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def learning_rate(step: int) -> float:  # nanoGPT's get_lr
    if step < 100:
        return 1e-3 * (step + 1) / 101
    ratio = (step - 100) / (STEPS - 100)
    return 1e-4 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)


def run(seed: int, text: str) -> dict:
    torch.manual_seed(seed)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = np.array([index[c] for c in text], np.int64)
    train, val = data[: int(len(data) * 0.9)], data[int(len(data) * 0.9):]
    model = GPT(len(chars))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-3,
                            betas=(0.9, 0.99))
    start = time.perf_counter()
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step)
        ix = torch.randint(len(train) - CONTEXT, (BATCH,)).tolist()
        x = torch.from_numpy(np.stack([train[i:i + CONTEXT] for i in ix]))
        y = torch.from_numpy(np.stack([train[i + 1:i + 1 + CONTEXT] for i in ix]))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    wall = time.perf_counter() - start
    model.eval()
    windows = (len(val) - 1) // CONTEXT
    xs = np.stack([val[i * CONTEXT:(i + 1) * CONTEXT] for i in range(windows)])
    ys = np.stack([val[i * CONTEXT + 1:(i + 1) * CONTEXT + 1] for i in range(windows)])
    total = 0.0
    with torch.no_grad():
        for i in range(0, windows, 64):
            logits = model(torch.from_numpy(xs[i:i + 64])).flatten(0, 1)
            targets = torch.from_numpy(ys[i:i + 64]).flatten()
            total += F.cross_entropy(logits, targets, reduction="sum").item()
    return {"seed": seed, "val_loss": round(total / ys.size, 4), "wall_s": round(wall, 1),
            "tokens_per_sec": round(STEPS * BATCH * CONTEXT / wall)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = open(args.data, encoding="utf-8").read()
    results = [run(int(s), text) for s in args.seeds.split(",")]
    for r in results:
        print(json.dumps(r))
    mean = sum(r["val_loss"] for r in results) / len(results)
    print(json.dumps({"mean_val_loss": round(mean, 4)}))


if __name__ == "__main__":
    main()
