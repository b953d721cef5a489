"""The same SST-2 fine-tuning as llmjax's, in PyTorch with Hugging Face transformers: the
reference that the imported-checkpoint figure is compared with.

    .venv/bin/python experiments/minilm_sst2/torch_finetune.py --model=MINILM_DIR --steps=400

Same recipe as `configs/bert_classify.py` with --config.init.hf_path: [CLS] sentence [SEP] cut to
64 tokens, batch 32 drawn from a shuffled train.tsv, AdamW (b2 0.999, weight decay 0.01 on
matrices only), linear warmup then linear decay to 0, global-norm clipping at 1, dropout 0.1,
a fresh classifier on the pooled [CLS] state; dev.tsv accuracy at the end. Prints JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

import numpy as np
import torch
import transformers

SST2 = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "sst2")


def read_tsv(path: str) -> tuple[list[str], np.ndarray]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--warmup_steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = transformers.BertTokenizerFast.from_pretrained(args.model)
    model = transformers.BertForSequenceClassification.from_pretrained(
        args.model, num_labels=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    texts, labels = read_tsv(os.path.join(SST2, "train.tsv"))
    dev_texts, dev_labels = read_tsv(os.path.join(SST2, "dev.tsv"))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, args.warmup_steps,
                                                            args.steps)
    order = np.random.default_rng(args.seed).permutation(len(texts))
    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        idx = order[(np.arange(args.batch_size) + step * args.batch_size) % len(texts)]
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=args.seq_len,
                        padding=True, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor(labels[idx])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    train_seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for lo in range(0, len(dev_texts), 128):
            enc = tokenizer(dev_texts[lo: lo + 128], truncation=True, max_length=args.seq_len,
                            padding=True, return_tensors="pt")
            predicted = model(**enc).logits.argmax(-1).numpy()
            correct += int((predicted == dev_labels[lo: lo + 128]).sum())
    print(json.dumps({"dev_accuracy": correct / len(dev_texts), "steps": args.steps,
                      "train_seconds": round(train_seconds, 1)}))


if __name__ == "__main__":
    main()
