"""Post-training a Hugging Face decoder folder (LLaMA, Mistral, Qwen, Gemma, ...) with its chat
template: `configs/instruct.py:stage=sft|dpo`.

    # supervised fine-tuning on conversations ({"messages": [{"role", "content"}, ...]} lines);
    # the loss is on every assistant answer
    llmjax train --config=configs/instruct.py:stage=sft --workdir=runs/sft \
        --config.init.hf_path=path/to/model --config.data.source=jsonl:chats.jsonl
    llmjax convert --to=hf --workdir=runs/sft --out=runs/sft-hf
    # then preference tuning from it ({"prompt", "chosen", "rejected"} lines, texts or
    # conversations); the reference model is the folder it starts from
    llmjax train --config=configs/instruct.py:stage=dpo --workdir=runs/dpo \
        --config.init.hf_path=runs/sft-hf --config.data.source=jsonl:prefs.jsonl
    llmjax generate --workdir=runs/dpo --messages='[{"role": "user", "content": "Hi!"}]'

The architecture, tokenizer and chat template come from the folder. Hyperparameters follow the
Zephyr recipe (Tunstall et al. 2023; TRL's defaults): SFT at 2e-5 with a cosine decay, DPO at
5e-7 with β = 0.1 and a linear decay, each after a 10% warmup; AdamW without weight decay,
clipping at 1, bfloat16 compute over float32 weights. Sequences: prompts of 1024 tokens and
answers of 1024. For a small GPU add --config.lora.rank=16 --config.lora.targets='attention|mlp'
(and a learning rate near 2e-4 for SFT, 5e-6 for DPO). No figures here: this machine has
neither instruct data nor a model worth tuning; tests/test_chat.py and tests/test_dpo.py check
the mechanics against transformers.
"""

from llmjax import configs


def get_config(arg: str | None = None):
    args = configs.parse_arg(arg, {"stage": "sft"})
    if args["stage"] not in ("sft", "dpo"):
        raise ValueError(f"stage={args['stage']!r}: use sft or dpo")
    c = configs.base_config()
    c.model.arch, c.model.max_len = "decoder", 2048  # the folder's replace them
    c.model.dtype = "bfloat16"
    c.data.chat_template = True
    c.data.validation_fraction = 0.02
    c.seq_len, c.target_seq_len = 1024, 1024
    c.num_train_steps, c.batch_size = 1000, 32
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 10, 200, 200
    o = c.optimizer
    o.warmup_steps, o.end_learning_rate = 100, 0.0
    o.b1, o.b2, o.eps, o.weight_decay, o.grad_clip_norm = 0.9, 0.999, 1e-8, 0.0, 1.0
    if args["stage"] == "sft":
        c.objective = "seq2seq"
        c.data.source = "jsonl:chats.jsonl"
        c.data.messages_column = "messages"
        c.data.pack_pairs = True
        c.eval_decode_examples = 32
        o.learning_rate, o.schedule = 2e-5, "cosine"
    else:
        c.objective = "dpo"
        c.data.source = "jsonl:prefs.jsonl"
        c.dpo.beta = 0.1
        o.learning_rate, o.schedule = 5e-7, "linear"
        c.checkpoint_best_metric = "reward_accuracy"
    return c
