"""Bidirectional (BERT-style) encoder: token, position and token-type embeddings, a stack of
non-causal Transformer blocks. Heads (MLM, NSP, classification) live in heads.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.models.attention import make_attention_mask, segment_positions
from llmjax.models.blocks import TransformerBlock, apply_blocks
from llmjax.models.config import ModelConfig
from llmjax.models.layers import Embed, Norm, dropout, fold, sinusoidal
from llmjax.models.moe import is_moe_layer

Array = jax.Array


class Encoder(nnx.Module):
    """tokens [B, L] (+ token types [B, L]) -> hidden states [B, L, D]; every token attends to
    every non-padding token of its segment (segment 0 = padding)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        cfg = dataclasses.replace(cfg, causal=False)
        self.cfg = cfg
        self.embed = Embed(cfg.vocab_size, cfg.emb_dim, cfg, rngs=rngs, rows="vocab")
        if cfg.position_embedding == "learned":
            self.position_embed = Embed(cfg.max_len, cfg.emb_dim, cfg, rngs=rngs)
        self.token_type_embed = (Embed(cfg.num_token_types, cfg.emb_dim, cfg, rngs=rngs)
                                 if cfg.num_token_types else None)  # 0: none (DistilBERT)
        # BERT (post-norm) normalises the summed embeddings; pre-norm stacks end with a norm.
        post = cfg.norm_position == "post"
        self.embed_norm = Norm(cfg.emb_dim, cfg) if post else None
        self.layers = nnx.List([TransformerBlock(cfg, rngs=rngs, moe=is_moe_layer(cfg, i))
                                for i in range(cfg.num_layers)])
        self.final_norm = None if post else Norm(cfg.emb_dim, cfg)

    def __call__(self, tokens_BxL: Array, *, token_types: Array | None = None,
                 segment_ids: Array | None = None, positions: Array | None = None,
                 rng: Array | None = None) -> Array:
        """Hidden states [B, L, D] of the last layer (after the final norm when pre-norm)."""
        cfg = self.cfg
        seg = (tokens_BxL != 0).astype(jnp.int32) if segment_ids is None else segment_ids
        pos = segment_positions(seg) if positions is None else positions
        x = self.embed(tokens_BxL)
        if self.token_type_embed is not None:
            one_type = token_types is None or cfg.num_token_types == 1  # RoBERTa: every type 0
            x = x + self.token_type_embed(jnp.zeros_like(tokens_BxL) if one_type
                                          else token_types)
        if cfg.position_embedding == "learned":
            x = x + self.position_embed(pos)
        elif cfg.position_embedding == "sinusoidal":
            x = x + sinusoidal(pos, cfg.emb_dim).astype(x.dtype)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = dropout(x, cfg.dropout_rate, fold(rng, 0))
        mask = make_attention_mask(seg, seg, causal=False)
        x = apply_blocks(self.layers, x, mask, pos, cfg=cfg, rng=rng)
        return x if self.final_norm is None else self.final_norm(x)


class EncoderWithHeads(nnx.Module):
    """An Encoder plus the heads an objective asks for: 'mlm' (tied to the input embeddings),
    'nsp' (2-way on the pooled [CLS]), 'classifier' (num_classes-way on the pooled [CLS]) and
    'token_classifier' (num_classes-way on every token's state, no pooler: Hugging Face's
    ForTokenClassification; its layer is named `classifier` too)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, heads: tuple[str, ...] = ("mlm",),
                 num_classes: int = 2):
        from llmjax.models.heads import ClassifierHead, MLMHead, Pooler

        unknown = set(heads) - {"mlm", "nsp", "classifier", "token_classifier"}
        if unknown:
            raise ValueError(f"unknown encoder heads {sorted(unknown)}")
        self.heads = tuple(heads)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.mlm_head = MLMHead(cfg, rngs=rngs) if "mlm" in heads else None
        pooled = "nsp" in heads or "classifier" in heads
        self.pooler = Pooler(cfg, rngs=rngs) if pooled else None
        self.nsp_head = ClassifierHead(cfg, 2, rngs=rngs) if "nsp" in heads else None
        self.classifier = (ClassifierHead(cfg, num_classes, rngs=rngs)
                           if "classifier" in heads or "token_classifier" in heads else None)

    def hidden_states(self, tokens_BxL: Array, **kwargs) -> Array:
        """[B, L, D]; kwargs: token_types, segment_ids, positions, rng (see Encoder)."""
        return self.encoder(tokens_BxL, **kwargs)

    def mlm_logits(self, hidden_BxLxD: Array) -> Array:
        return self.mlm_head(hidden_BxLxD, self.encoder.embed)

    def nsp_logits(self, hidden_BxLxD: Array, rng: Array | None = None) -> Array:
        return self.nsp_head(self.pooler(hidden_BxLxD), rng)

    def class_logits(self, hidden_BxLxD: Array, rng: Array | None = None) -> Array:
        return self.classifier(self.pooler(hidden_BxLxD), rng)

    def classify(self, tokens_BxL: Array, *, segment_ids: Array, rng: Array | None = None,
                 token_types: Array | None = None) -> Array:
        """Class logits [B, num_classes] (float32) from the pooled [CLS] state."""
        hidden = self.hidden_states(tokens_BxL, token_types=token_types,
                                    segment_ids=segment_ids, rng=rng)
        return self.class_logits(hidden, rng)

    def token_class_logits(self, hidden_BxLxD: Array, rng: Array | None = None) -> Array:
        """[B, L, num_classes]: every token's classes."""
        return self.classifier(hidden_BxLxD, rng)

    def __call__(self, tokens_BxL: Array, **kwargs) -> Array:
        """The primary head's logits: MLM [B, L, V] if present, else classes [B, C] (per token
        [B, L, C] for 'token_classifier')."""
        hidden = self.hidden_states(tokens_BxL, **kwargs)
        if self.mlm_head is not None:
            return self.mlm_logits(hidden)
        if "token_classifier" in self.heads:
            return self.token_class_logits(hidden)
        if self.classifier is not None:
            return self.class_logits(hidden)
        return self.nsp_logits(hidden)
