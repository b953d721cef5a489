"""GPT-style causal language model:
`configs/gpt.py:size=tiny|small|base,tokenizer=char|byte|bpe,style=gpt2|llama|gemma2|pythia|deepseek`.

    llmjax train --config=configs/gpt.py:size=tiny,tokenizer=char --workdir=runs/gpt \
        --config.data.source=text:../shared/data/tinyshakespeare/input.txt

Sizes: tiny = nanoGPT's CPU Shakespeare recipe (4 layers x 128 dims x 4 heads, context 64,
batch 12, no biases, tied embeddings, 2000 steps; with the text file above it reaches val loss
1.910 nats/char, mean of 3 seeds, ~2 minutes each on 2 CPU cores: see
experiments/shakespeare_char), small = 6 x 384 x 6, context 256, base = GPT-2 124M shape
(12 x 768 x 12, context 1024). Data defaults to tiny shakespeare from TFDS.

Styles: gpt2 = LayerNorm, learned positions, GELU, tied embeddings (nanoGPT); llama = the same
sizes LLaMA's way: RMSNorm, rotary positions, SwiGLU with a 8/3 x width hidden layer (rounded
up to a multiple of 64, as LLaMA's 2/3 of 4 x width), grouped-query attention with half as
many key/value heads, untied embeddings (the layout `convert --to=hf` writes as LLaMA). With
the tiny Shakespeare command above, seed 0: final eval loss 1.683 (style=llama) vs 1.898
(style=gpt2), 2000 steps each. gemma2 = llama's sizes Gemma 2's way: a tanh-GELU gated MLP,
tied embeddings scaled by sqrt(width), a norm on each sublayer's output too, attention and
output logits soft-capped (50, 30), and every other layer attending through a window of half
the context (the layout `convert --to=hf` writes as Gemma 2); the same command with
style=gemma2, seed 0: final eval loss 1.653 in 2000 steps (797,568 parameters; session 12).
pythia = the gpt2 sizes GPT-NeoX's way: biases, untied embeddings, rotary positions on a
quarter of each head, attention and MLP side by side (the layout `convert --to=hf` writes as
GPT-NeoX); the same command with style=pythia, seed 0: final eval loss 1.810 in 2000 steps
(811,264 parameters; session 15). deepseek = llama's sizes with DeepSeek-V2's multi-head
latent attention (models/latent_attention.py) in DeepSeek-V2-Lite's proportions: keys and
values from a latent of width / 4 dims, each head's queries and keys width / heads unrotated +
half that rotary dims, values width / heads: its decoding cache holds 1/8 + 1/(4 x heads) of
the numbers per token that multi-head attention's would (3/16 at tiny, a third of style=llama's
grouped-query cache at small). The same command with style=deepseek, seeds 0-2: mean final
eval loss 1.701 in 2000 steps (830,208 parameters; with experts=8, 1.677; session 26:
experiments/deepseek_shakespeare).

experts=E (any style) makes every feed-forward layer a mixture of E experts (models/moe.py),
each token through its top 2, each expert half the dense layer's width: the dense model's
FLOPs per token with E / 2 times its feed-forward parameters (Switch Transformer's comparison).
With style=deepseek it is DeepSeek-V3's mixture (the layout `convert --to=hf` writes as
DeepSeek-V3, as it writes style=deepseek alone): the first block dense, then sigmoid routing
balanced by router biases (model.moe_router_bias) over E experts a third of the dense width,
each token through its top 2 and an always-on shared expert of that width: the same FLOPs.
"""

from llmjax import configs

SIZES = {  # layers, emb_dim, heads, seq_len, batch_size
    "tiny": (4, 128, 4, 64, 12),
    "small": (6, 384, 6, 256, 16),
    "base": (12, 768, 12, 1024, 32),
}


def get_config(arg: str | None = None):
    args = configs.parse_arg(arg, {"size": "tiny", "tokenizer": "char", "style": "gpt2",
                                   "experts": 0})
    if args["size"] not in SIZES:
        raise ValueError(f"size={args['size']!r}: use one of {sorted(SIZES)}")
    styles = ("gpt2", "llama", "gemma2", "pythia", "deepseek")
    if args["style"] not in styles:
        raise ValueError(f"style={args['style']!r}: use one of {', '.join(styles)}")
    layers, dim, heads, seq_len, batch = SIZES[args["size"]]
    c = configs.base_config()
    c.objective = "causal_lm"
    c.data.source = "tfds:tiny_shakespeare"
    c.tokenizer.kind = args["tokenizer"]
    c.tokenizer.vocab_size = 8192
    m = c.model
    m.arch, m.num_layers, m.emb_dim, m.num_heads = "decoder", layers, dim, heads
    m.mlp_dim, m.max_len = 4 * dim, seq_len
    m.use_bias, m.tie_embeddings, m.dropout_rate = False, True, 0.0
    m.position_embedding = "learned"
    m.activation = "gelu_exact"  # nanoGPT: nn.GELU()
    if args["style"] in ("llama", "gemma2", "deepseek"):
        m.norm, m.position_embedding, m.activation, m.gated_mlp = "rmsnorm", "rotary", "silu", True
        m.mlp_dim = -(-8 * dim // 3 // 64) * 64
        m.num_kv_heads, m.tie_embeddings = heads // 2, False
    if args["style"] == "gemma2":
        m.activation, m.tie_embeddings, m.scale_embeddings = "gelu", True, True
        m.post_norms, m.attention_softcap, m.logit_softcap = True, 50.0, 30.0
        m.attention_window, m.global_attention_every = seq_len // 2, 2
    if args["style"] == "deepseek":  # DeepSeek-V2-Lite's proportions
        head_dim = dim // heads
        m.num_kv_heads, m.kv_lora_rank = None, dim // 4
        m.head_dim, m.qk_rope_head_dim, m.v_head_dim = head_dim, head_dim // 2, head_dim
    if args["style"] == "pythia":
        m.position_embedding, m.rotary_fraction, m.parallel_residual = "rotary", 0.25, True
        m.use_bias, m.tie_embeddings = True, False
    if args["experts"]:  # top-2 of E experts half as wide: the dense model's FLOPs
        m.num_experts, m.num_experts_per_token = args["experts"], 2
        m.mlp_dim //= 2
    if args["experts"] and args["style"] == "deepseek":  # DeepSeek-V3's mixture, same FLOPs
        m.mlp_dim *= 2  # the first block's dense layer
        m.moe_router, m.moe_router_bias, m.moe_balance_loss_weight = "sigmoid", True, 1e-4
        m.moe_first_dense, m.moe_mlp_dim = 1, m.mlp_dim // 3
        m.moe_shared_mlp_dim, m.moe_shared_gated = m.moe_mlp_dim, False
    c.seq_len, c.batch_size = seq_len, batch
    c.num_train_steps = 2000
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 100, 500, 500
    o = c.optimizer
    o.learning_rate, o.end_learning_rate, o.schedule = 1e-3, 1e-4, "cosine"
    o.warmup_steps, o.b1, o.b2, o.weight_decay, o.grad_clip_norm = 100, 0.9, 0.99, 0.1, 1.0
    return c
