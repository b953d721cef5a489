"""The model's hyperparameters as a frozen dataclass (hashable, so it can be a static jit arg)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    num_layers: int = 2
    num_encoder_layers: int | None = None  # encoder_decoder: None = num_layers
    num_decoder_layers: int | None = None
    num_heads: int = 4
    num_kv_heads: int | None = None  # grouped-query attention; None = num_heads (multi-head)
    head_dim: int = 32
    emb_dim: int = 128
    mlp_dim: int = 512
    max_len: int = 512
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    position_embedding: str = "learned"
    rotary_base: float = 10000.0
    rotary_fraction: float = 1.0  # of each head's dims that rotate (GPT-NeoX: 0.25)
    rope_scaling: str = "none"  # none | linear | llama3 | yarn (layers.rotary_frequencies)
    rope_scaling_factor: float = 8.0
    rope_original_max_len: int = 8192  # llama3, yarn: the context of the first training
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_beta_fast: float = 32.0  # yarn's ramp between kept and scaled frequencies
    rope_beta_slow: float = 1.0
    rope_attention_factor: float | None = None  # yarn: None = 0.1 ln(factor) + 1
    rope_mscale_all_dim: float = 0.0  # yarn: logits x (0.1 this ln(factor) + 1)^2 (DeepSeek)
    local_rotary_base: float | None = None  # windowed layers' base, no scaling (Gemma 3)
    relative_buckets: int = 32  # T5 relative position buckets ('relative' positions)
    relative_max_distance: int = 128
    norm: str = "layernorm"
    norm_position: str = "pre"
    norm_epsilon: float = 1e-5
    activation: str = "gelu"
    gated_mlp: bool = False
    use_bias: bool = True
    qk_norm: bool = False  # a norm on queries and keys (Qwen3, OLMo 2)
    qk_norm_scope: str = "head"  # head: over each head's dims (Qwen3) | all: all heads' (OLMo 2)
    qkv_bias: bool | None = None  # biases on query/key/value only; None = use_bias (Qwen2: True)
    tie_embeddings: bool = True
    scale_attention: bool = True  # queries times head_dim ** -0.5 (T5 folds it into its init)
    scale_decoder_outputs: bool = False  # T5 v1.0: final states times emb_dim ** -0.5
    scale_embeddings: bool = False  # token embeddings times sqrt(emb_dim) (BART, Gemma)
    parallel_residual: bool = False  # x + attention(norm(x)) + mlp(norm'(x)) (GPT-NeoX, GPT-J)
    parallel_shared_norm: bool = False  # ... with norm' = norm: one norm per block (Phi, GPT-J)
    lm_head_bias: bool = False  # an untied decoder's output projection has a bias (Phi)
    post_norms: bool = False  # pre-norm blocks: a norm on each sublayer's output (Gemma 2/3)
    query_scale_dim: int | None = None  # queries times this ** -0.5; None: head_dim
    attention_softcap: float | None = None  # attention logits -> cap * tanh(logits / cap)
    logit_softcap: float | None = None  # decoder output logits, the same (Gemma 2)
    embed_norm: bool = False  # decoder: a norm on the embeddings (BLOOM)
    remat: str = "none"  # none | full | dots: what the backward pass recomputes per block
    scan_layers: bool = False  # blocks under jax.lax.scan (parameters stay one per layer)
    logits_chunks: int = 1  # LM losses: output logits made (and remade in backward) per chunk
    attention_window: int | None = None  # decoder: sliding-window attention (Mistral)
    global_attention_every: int | None = None  # every k-th layer unwindowed (Gemma 2/3)
    # einsum | blockwise (models/blockwise_attention.py) | xla | cudnn (jax.nn's)
    attention_impl: str = "einsum"
    attention_block_size: int = 512  # blockwise: keys per block
    float32_matmul_outputs: bool = True  # False: weight matmuls write the compute dtype
    causal: bool = True
    num_token_types: int = 2  # encoder: 1 (RoBERTa) reads every token as type 0; 0: no table
    pooler_activation: str = "tanh"  # encoder's pooled [CLS]: tanh (BERT) | relu (DistilBERT)
    num_experts: int = 0  # mixture-of-experts feed-forward layers (models/moe.py); 0: dense
    num_experts_per_token: int = 2  # top-k
    moe_every: int = 1  # every k-th block is a mixture (layers k-1, 2k-1, ...), others dense
    moe_normalize_top_k: bool = True  # chosen experts' weights rescaled to sum 1 (Mixtral)
    moe_capacity_factor: float = 1.25  # training's buffer size; 0: dropless
    moe_shared_mlp_dim: int = 0  # a gated shared expert every token runs through (Qwen2-MoE)
    moe_shared_gated: bool = True  # its output x sigmoid(gate); False: added as is (DeepSeek)
    moe_mlp_dim: int | None = None  # each expert's hidden units; None: mlp_dim
    moe_first_dense: int = 0  # the first k blocks stay dense (DeepSeek's first_k_dense_replace)
    moe_router: str = "softmax"  # softmax | sigmoid (DeepSeek-V3): the experts' scores
    moe_router_bias: bool = False  # a bias on the scores for choosing only (DeepSeek-V3)
    moe_groups: int = 0  # experts in groups; a token picks its moe_group_top_k best groups first
    moe_group_top_k: int = 0
    moe_routed_scale: float = 1.0  # the chosen experts' weights x this (routed_scaling_factor)
    mtp_depth: int = 0  # decoder: multi-token prediction modules (DeepSeek-V3; models/mtp.py)
    kv_lora_rank: int = 0  # multi-head latent attention's key/value latent (DeepSeek); 0: off
    q_lora_rank: int = 0  # latent attention: the queries' low-rank bottleneck; 0: full rank
    qk_rope_head_dim: int = 64  # latent attention: rotary dims per head beside head_dim's
    v_head_dim: int | None = None  # latent attention: value dims per head; None: head_dim

    @property
    def encoder_layers(self) -> int:
        return self.num_layers if self.num_encoder_layers is None else self.num_encoder_layers

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    def layer_windowed(self, layer: int) -> bool:
        """Whether block `layer` (from 0) attends through `attention_window`: all do, unless
        `global_attention_every` = k makes layers k-1, 2k-1, ... global (Hugging Face's
        layer_types of Gemma 2 and 3)."""
        if self.attention_window is None:
            return False
        k = self.global_attention_every
        return not (k and (layer + 1) % k == 0)

    @property
    def rotary_dim(self) -> int:
        """The leading dims of each head that rotary positions rotate (Hugging Face's
        int(head_dim * partial_rotary_factor)); the rest pass through unchanged. Latent
        attention rotates qk_rope_head_dim dims of their own."""
        if self.kv_lora_rank:
            return self.qk_rope_head_dim
        return int(self.head_dim * self.rotary_fraction)

    @property
    def query_key_dim(self) -> int:
        """Dims per head that queries and keys multiply over: head_dim, plus latent
        attention's rotary dims."""
        return self.head_dim + (self.qk_rope_head_dim if self.kv_lora_rank else 0)

    @property
    def value_dim(self) -> int:
        """Dims per head of the values (and of the attention output)."""
        if self.kv_lora_rank and self.v_head_dim is not None:
            return self.v_head_dim
        return self.head_dim

    @property
    def kv_heads(self) -> int:
        """Key/value heads: num_heads (multi-head), 1 (multi-query) or a divisor (grouped)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def matmul_result_dtype(self) -> jnp.dtype:
        """What the weight matmuls (dense layers, output logits) write; they accumulate in
        float32 either way."""
        return jnp.dtype(jnp.float32) if self.float32_matmul_outputs else self.compute_dtype

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_config(cls, model: ml_collections.ConfigDict, **overrides) -> ModelConfig:
        """From `config.model` (whose vocab_size must be resolved)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: model[k] for k in model.keys() if k in fields and model[k] is not None}
        values.setdefault("head_dim", model.emb_dim // model.num_heads)
        values.update(overrides)
        return cls(**values)
