"""The embedded default: a tiny GPT-style decoder on the `generated` Markov language.

    make demo          # = llmjax train --config=configs/demo.py --workdir=runs/demo

Runs offline anywhere, ~90 s on 2 CPU cores. The eval log prints `eval/best_achievable_loss`,
the Bayes-optimal loss of this data given the model's context: the demo ends at eval/loss 1.717
against a floor of 1.705 (gap 0.012 nats/token; benchmarks/demo_floor.py).
"""

from llmjax import configs


def get_config(arg: str | None = None):
    del arg
    c = configs.base_config()
    c.objective = "causal_lm"
    c.data.source = "generated"
    c.tokenizer.kind = "char"
    c.model.arch = "decoder"
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.emb_dim = 64
    c.model.mlp_dim = 256
    c.model.max_len = 128
    c.model.use_bias = False
    c.model.position_embedding = "rotary"  # learns the previous-characters lookup fast
    c.seq_len = 128
    c.batch_size = 16
    c.num_train_steps = 1500
    c.log_every_steps = 100
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.optimizer.learning_rate = 3e-3
    c.optimizer.end_learning_rate = 1e-4
    c.optimizer.warmup_steps = 100
    c.optimizer.weight_decay = 0.0
    return c
