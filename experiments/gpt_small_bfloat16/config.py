"""bfloat16 against float32 at issue 8's second CPU size: `config.py:dtype=bfloat16|float32`.

    llmjax train --config=experiments/gpt_small_bfloat16/config.py:dtype=bfloat16 \
        --workdir=runs/small_bf16

configs/gpt.py's small decoder (6 layers x 384 dims x 6 heads, MLP 1536, context 256,
batch 16) in GPT-2's layout, as benchmarks/vs_pytorch.py times it beside GPT2LMHeadModel
(biases, tanh GELU, pre-LayerNorm, learned positions, tied embeddings, no dropout), trained
1000 steps character level on ../shared/data/tinyshakespeare/input.txt (first 90% of the
characters train; the last 10%, evaluated whole, validate) with configs/gpt.py's AdamW recipe
(lr 1e-3, warmup 100, cosine to 1e-4, b2 0.99, weight decay 0.1, clip 1.0). Figures in
README.md beside this file.
"""

import os

from llmjax import configs

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                    "tinyshakespeare", "input.txt")


def get_config(arg: str | None = None):
    args = configs.parse_arg(arg, {"dtype": "bfloat16", "seed": 0,
                                   "data": os.path.abspath(DATA)})
    c = configs.base_config()
    c.seed = args["seed"]
    c.objective = "causal_lm"
    c.data.source = f"text:{args['data']}"
    c.data.validation_fraction = 0.1
    c.tokenizer.kind = "char"
    m = c.model
    m.arch, m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim = "decoder", 6, 6, 384, 1536
    m.max_len, m.use_bias, m.tie_embeddings, m.dropout_rate = 256, True, True, 0.0
    m.position_embedding, m.activation, m.dtype = "learned", "gelu", args["dtype"]
    c.seq_len, c.batch_size, c.num_train_steps = 256, 16, 1000
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 100, 250, 1000
    o = c.optimizer
    o.learning_rate, o.end_learning_rate, o.schedule, o.warmup_steps = 1e-3, 1e-4, "cosine", 100
    o.b1, o.b2, o.weight_decay, o.grad_clip_norm = 0.9, 0.99, 0.1, 1.0
    return c
