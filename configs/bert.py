"""BERT-style encoder pretraining: `configs/bert.py:size=tiny|mini|small|base,objective=mlm_nsp`.

    llmjax train --config=configs/bert.py:size=tiny --workdir=runs/bert-tiny

Post-norm Transformer encoder with token-type embeddings, learned positions, exact GELU, a
WordPiece vocabulary trained on the data (lower-cased), BERT masking and NSP pairs drawn afresh
every batch. Sizes follow the BERT miniatures (Turc et al. 2019): tiny 2 x 128, mini 4 x 256,
small 4 x 512, base 12 x 768. Data: WikiText-2 from ../shared/data (valid.txt trains, test.txt
evaluates; the train file is not available offline); for Wikipedia from the TFDS catalog use
--config.data.source=tfds:wikipedia/20230601.en --config.data.train_split='train[1%:]'
--config.data.eval_source=tfds:wikipedia/20230601.en --config.data.eval_split='train[:1%]'.

Figures (tiny, 3000 steps, 2 CPU cores, 44 min): test.txt MLM accuracy 0.143, NSP accuracy
0.684; details and the SST-2 follow-up in experiments/bert_sst2/README.md.
"""

import os

from llmjax import configs

SIZES = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "base": (12, 768, 12)}
WIKITEXT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "wikitext-2")


def get_config(arg: str | None = None):
    args = configs.parse_arg(arg, {"size": "tiny", "objective": "mlm_nsp"})
    if args["size"] not in SIZES:
        raise ValueError(f"size={args['size']!r}: use one of {sorted(SIZES)}")
    layers, dim, heads = SIZES[args["size"]]
    c = configs.base_config()
    c.objective = args["objective"]
    m = c.model
    m.arch, m.num_layers, m.emb_dim, m.num_heads, m.mlp_dim = "encoder", layers, dim, heads, 4 * dim
    m.max_len, m.norm_position, m.activation, m.position_embedding = 512, "post", "gelu_exact", \
        "learned"
    m.norm_epsilon, m.use_bias, m.dropout_rate, m.attention_dropout_rate = 1e-12, True, 0.1, 0.1
    c.tokenizer.kind, c.tokenizer.vocab_size, c.tokenizer.lowercase = "wordpiece", 8192, True
    c.data.source = "text:" + os.path.abspath(os.path.join(WIKITEXT, "valid.txt"))
    c.data.eval_source = "text:" + os.path.abspath(os.path.join(WIKITEXT, "test.txt"))
    c.data.validation_fraction = 0.0  # all of valid.txt trains; test.txt evaluates
    c.seq_len, c.batch_size, c.num_train_steps = 128, 32, 3000
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 100, 1000, 1000
    o = c.optimizer
    o.learning_rate, o.end_learning_rate, o.schedule, o.warmup_steps = 1e-3, 1e-5, "linear", 300
    o.b2, o.weight_decay = 0.999, 0.01
    return c
