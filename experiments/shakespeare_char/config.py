"""nanoGPT's CPU Shakespeare recipe, frozen: `experiments/shakespeare_char/config.py:seed=0`.

    llmjax train --config=experiments/shakespeare_char/config.py:seed=0 --workdir=runs/shk0

Character level on ../shared/data/tinyshakespeare/input.txt (first 90% of the characters train,
last 10% validation); 4 layers x 4 heads x 128 dims, context 64, batch 12, no biases, tied
embeddings, dropout 0; AdamW lr 1e-3 (b2 0.99, weight decay 0.1 on matrices), clip 1.0,
warmup 100 then cosine to 1e-4 at step 2000. Figures in README.md beside this file.
"""

import os

from llmjax import configs

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                    "tinyshakespeare", "input.txt")


def get_config(arg: str | None = None):
    args = configs.parse_arg(arg, {"seed": 0, "data": os.path.abspath(DATA)})
    c = configs.base_config()
    c.seed = args["seed"]
    c.objective = "causal_lm"
    c.data.source = f"text:{args['data']}"
    c.data.validation_fraction = 0.1
    c.data.train_window_stride = 1  # nanoGPT samples windows at random offsets
    c.tokenizer.kind = "char"
    m = c.model
    m.arch, m.num_layers, m.num_heads, m.emb_dim, m.mlp_dim = "decoder", 4, 4, 128, 512
    m.max_len, m.use_bias, m.tie_embeddings, m.dropout_rate = 64, False, True, 0.0
    m.position_embedding, m.activation = "learned", "gelu_exact"  # nanoGPT: nn.GELU()
    c.seq_len, c.batch_size, c.num_train_steps = 64, 12, 2000
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 250, 2000, 2000
    o = c.optimizer
    o.learning_rate, o.end_learning_rate, o.schedule, o.warmup_steps = 1e-3, 1e-4, "cosine", 100
    o.b1, o.b2, o.weight_decay, o.grad_clip_norm = 0.9, 0.99, 0.1, 1.0
    return c
