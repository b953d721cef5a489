"""The one base config, config-file argument parsing, (de)serialisation, and the parsing of
string-valued keys (compiler options, named eval sources). Checks: llmjax/validation.py.

Every experiment config in configs/ starts from `base_config()`, so every key a run can have is
defined (with its type) here, and the command line can override any of them.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import ml_collections
from ml_collections import config_dict


class ConfigError(ValueError):
    """A config that cannot run; the message says what, where and how to fix it."""


def base_config() -> ml_collections.ConfigDict:
    """Every key a run can have, with its default. `placeholder(T)` keys default to None."""
    c = ml_collections.ConfigDict()
    c.objective = "causal_lm"
    c.seed = 0
    c.batch_size = 32  # global, over all devices and hosts
    c.seq_len = 128
    c.target_seq_len = 32  # seq2seq / span-corruption targets
    c.num_train_steps = 1000
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.eval_steps = config_dict.placeholder(int)  # None: the whole eval split
    # seq2seq / question answering: how many eval examples are decoded (answered) for BLEU /
    # exact match / F1 (None or 0: all)
    c.eval_decode_examples = config_dict.placeholder(int)
    # seq2seq: what the decoded eval examples are scored with (evaluation/text_metrics.py):
    # comma-separated, of bleu, chrf, rouge (rouge1, rouge2, rougeL, rougeLsum), exact_match
    c.eval_decode_metrics = "bleu,exact_match"
    c.eval_samples = 3  # seq2seq / question answering: answers written to the log at each eval
    # causal LM: prompts, separated by |, continued at each eval with the generate.* settings
    # and written to WORKDIR/samples.jsonl, TensorBoard and the log ("" = one from <bos> alone)
    c.eval_prompts = config_dict.placeholder(str)
    c.checkpoint_every_steps = 500
    c.max_checkpoints_to_keep = 3
    # an eval metric (e.g. eval/accuracy): its best eval's parameters are kept in WORKDIR/best
    c.checkpoint_best_metric = config_dict.placeholder(str)
    c.checkpoint_best_mode = "auto"  # min | max | auto: min for losses and perplexity, else max
    # stop (with a checkpoint) when checkpoint_best_metric has not improved for this many evals
    c.early_stopping_evals = config_dict.placeholder(int)
    c.async_checkpointing = True
    c.peak_flops_per_device = config_dict.placeholder(float)  # None: datasheet, or measured on CPU
    c.progress_bar = True
    # a NaN/Inf loss or gradient norm: False stops the run (nothing bad is saved); True skips
    # that update (parameters and optimizer state unchanged) and counts it
    c.skip_nonfinite_updates = False
    # training-loss regularisers of every cross-entropy (eval loss stays the plain one)
    c.label_smoothing = 0.0  # target = (1 - e) one-hot + e / vocabulary size
    c.z_loss = 0.0  # + z * log(Z)^2 per token, Z the softmax normaliser (PaLM uses 1e-4)

    c.model = m = ml_collections.ConfigDict()
    m.arch = "decoder"
    m.num_layers = 2
    m.num_encoder_layers = config_dict.placeholder(int)
    m.num_decoder_layers = config_dict.placeholder(int)
    m.num_heads = 4
    m.num_kv_heads = config_dict.placeholder(int)  # None: num_heads (grouped-query attention)
    m.attention_window = config_dict.placeholder(int)  # decoder: each token sees this many keys
    # with attention_window: every k-th layer (the k-th, 2k-th, ...) attends to all earlier
    # tokens, the others through the window (Gemma 2: 2, Gemma 3: 6); None: every layer windowed
    m.global_attention_every = config_dict.placeholder(int)
    m.head_dim = config_dict.placeholder(int)  # None: emb_dim // num_heads
    m.emb_dim = 128
    m.mlp_dim = 512
    m.max_len = 512
    m.vocab_size = config_dict.placeholder(int)  # None: the tokenizer's size
    m.num_classes = config_dict.placeholder(int)  # classification: None = size of data.labels
    m.dropout_rate = 0.0
    m.attention_dropout_rate = 0.0
    m.dtype = "float32"  # compute dtype
    m.param_dtype = "float32"
    m.position_embedding = "learned"  # learned | sinusoidal | rotary | relative | none
    m.rotary_base = 10000.0
    m.rotary_fraction = 1.0  # the leading fraction of each head's dims that rotate (GPT-NeoX)
    m.local_rotary_base = config_dict.placeholder(float)  # windowed layers' RoPE base (Gemma 3)
    m.rope_scaling = "none"  # none | linear | llama3 | yarn: RoPE for longer contexts
    m.rope_scaling_factor = 8.0
    m.rope_original_max_len = 8192  # llama3, yarn: the context of the first training
    m.rope_low_freq_factor = 1.0
    m.rope_high_freq_factor = 4.0
    m.rope_beta_fast = 32.0  # yarn: rotations in the original context above which ...
    m.rope_beta_slow = 1.0  # ... frequencies are kept, and below which they are scaled
    m.rope_attention_factor = config_dict.placeholder(float)  # yarn: None = 0.1 ln(factor) + 1
    # yarn: attention logits also x (0.1 x this x ln(factor) + 1)^2 (DeepSeek's mscale_all_dim);
    # 0: not
    m.rope_mscale_all_dim = 0.0
    m.relative_buckets = 32  # position_embedding=relative (T5): buckets per direction pair
    m.relative_max_distance = 128  # distances beyond this share the last bucket
    m.norm = "layernorm"  # layernorm | rmsnorm
    m.norm_position = "pre"  # pre | post | output (each sublayer's output normed: OLMo 2)
    m.norm_epsilon = 1e-5
    m.activation = "gelu"  # gelu | relu | silu
    m.gated_mlp = False
    m.use_bias = True
    m.qk_norm = False  # norm queries and keys before attention (Qwen3, OLMo 2)
    m.qk_norm_scope = "head"  # head: each head's dims (Qwen3) | all: all heads' at once (OLMo 2)
    m.qkv_bias = config_dict.placeholder(bool)  # None: use_bias (Qwen2: True with use_bias off)
    m.tie_embeddings = True
    m.scale_attention = True  # attention logits / sqrt(head_dim); T5 checkpoints: False
    m.scale_decoder_outputs = False  # T5 v1.0: decoder output states / sqrt(emb_dim)
    m.scale_embeddings = False  # token embeddings * sqrt(emb_dim) (BART option, Gemma)
    # pre-norm blocks add attention and MLP of the same input: x + attn(n1(x)) + mlp(n2(x))
    m.parallel_residual = False
    m.parallel_shared_norm = False  # with parallel_residual: both read one norm (Phi, GPT-J)
    m.lm_head_bias = False  # decoder, untied embeddings: a bias on the output projection (Phi)
    m.post_norms = False  # pre-norm blocks also normalise each sublayer's output (Gemma 2/3)
    m.query_scale_dim = config_dict.placeholder(int)  # queries / sqrt(this); None: head_dim
    m.attention_softcap = config_dict.placeholder(float)  # logits -> cap tanh(logits / cap)
    m.logit_softcap = config_dict.placeholder(float)  # decoder output logits, the same
    m.embed_norm = False  # decoder: normalise the token embeddings (BLOOM)
    m.num_token_types = 2  # encoder: segment A / B embeddings; 1 = all A (RoBERTa); 0 = none
    m.pooler_activation = "tanh"  # encoder: the pooled [CLS]'s, tanh (BERT) | relu (DistilBERT)
    # einsum: the project's own attention (dropout on probabilities, any mask); blockwise: the
    # same over blocks of attention_block_size keys, never holding a [Q, S] array of scores
    # (FlashAttention's algorithm in JAX, any backend; long sequences); xla or cudnn:
    # jax.nn.dot_product_attention with that implementation (cudnn = flash attention on NVIDIA
    # GPUs, bfloat16/float16 only); xla and cudnn without attention dropout
    m.attention_impl = "einsum"
    m.attention_block_size = 512
    # the weight matmuls' results (dense layers, output logits) in float32; False: rounded to
    # the compute dtype as the GEMM writes them (PyTorch autocast, MaxText): half the memory
    # traffic of every activation a matmul writes, the bias, activation, norms, softmax and
    # loss still in float32
    m.float32_matmul_outputs = True
    # rematerialisation per block: none (keep activations), full (recompute the block in the
    # backward pass), dots (keep only matmul outputs, recompute the rest)
    m.remat = "none"
    m.scan_layers = False  # run the blocks under jax.lax.scan: one compiled block, fast compile
    # language-model losses (causal_lm, seq2seq, span_corruption) over this many chunks of the
    # sequence, each chunk's gradients taken as it goes: 1/N of the [B, L, V] logits live
    m.logits_chunks = 1
    # mixture of experts (Switch Transformer, Mixtral; llmjax/models/moe.py): feed-forward
    # layers of num_experts expert MLPs, each mlp_dim wide; a router sends each token to its
    # num_experts_per_token best
    m.num_experts = 0  # 0: dense feed-forward layers
    m.num_experts_per_token = 2
    m.moe_every = 1  # every k-th block (the k-th, 2k-th, ...) is a mixture, the others dense
    m.moe_normalize_top_k = True  # chosen experts' weights rescaled to sum 1 (Mixtral)
    # training: an expert takes at most ceil(factor x k x L / E) of a row's L tokens, the rest
    # skip it; 0: no limit (dropless). Evaluation and decoding are always dropless
    m.moe_capacity_factor = 1.25
    # a shared expert of this many hidden units that every token runs through, its output
    # scaled by a sigmoid gate of the token (Qwen2-MoE); 0: none
    m.moe_shared_mlp_dim = 0
    m.moe_shared_gated = True  # the shared expert's output x that gate; False: as is (DeepSeek)
    m.moe_mlp_dim = config_dict.placeholder(int)  # each expert's hidden units; None: mlp_dim
    m.moe_first_dense = 0  # the first k blocks keep dense layers (DeepSeek)
    # DeepSeek's routing: sigmoid scores (V3) instead of a softmax; a bias on the scores that
    # steers the choice only (V3), trained by moving it moe_bias_update_rate against the sign
    # of each expert's excess load after every step; the choice limited to each token's
    # moe_group_top_k best of moe_groups groups of experts; the weights x moe_routed_scale
    m.moe_router = "softmax"  # softmax | sigmoid
    m.moe_router_bias = False
    m.moe_bias_update_rate = 0.001
    m.moe_groups = 0  # 0: no groups
    m.moe_group_top_k = 0
    m.moe_routed_scale = 1.0
    m.moe_balance_loss_weight = 0.01  # x the load-balancing loss (Switch: 1 when balanced)
    m.moe_z_loss_weight = 0.001  # x the router z-loss (ST-MoE)
    # multi-token prediction (DeepSeek-V3; llmjax/models/mtp.py), causal_lm only: this many
    # extra modules, module k predicting the token k + 2 ahead; training adds mtp_loss_weight x
    # their mean cross-entropy (train/mtp_loss). Generation and exports leave them out
    m.mtp_depth = 0
    m.mtp_loss_weight = 0.3
    # multi-head latent attention (DeepSeek-V2/V3; llmjax/models/latent_attention.py), rotary
    # positions only: keys and values come from a per-token latent of kv_lora_rank dims (what
    # decoding caches, with the qk_rope_head_dim rotary key dims), each head's queries and keys
    # have head_dim unrotated + qk_rope_head_dim rotary dims, its values v_head_dim
    m.kv_lora_rank = 0  # 0: standard multi-head attention
    m.q_lora_rank = 0  # the queries' own low-rank bottleneck; 0: a full-rank projection
    m.qk_rope_head_dim = 64
    m.v_head_dim = config_dict.placeholder(int)  # None: head_dim

    c.data = d = ml_collections.ConfigDict()
    d.source = "generated"
    d.eval_source = config_dict.placeholder(str)  # None: the train source's eval split
    # more eval sets, NAME=SOURCE;NAME=SOURCE: each reported as eval_NAME/<metric> at every eval
    d.extra_eval_sources = config_dict.placeholder(str)
    # multiple-choice eval sets, NAME=SOURCE;...: eval_NAME/choice_accuracy(_norm) at every eval
    d.choice_eval_sources = config_dict.placeholder(str)
    # multiple choice: the question / context; question answering: the passage holding answers
    d.context_column = "context"
    d.choices_column = "choices"  # multiple choice: the list of choices
    d.choice_delimiter = " "  # decoders score context + this + choice
    # seq2seq decoders: lay pairs out with the tokenizer's Hugging Face chat template
    d.chat_template = False
    d.pack_pairs = False  # seq2seq: pack training pairs several to a row (both layouts)
    # seq2seq decoders with chat_template: records hold conversations (role/content lists)
    d.messages_column = config_dict.placeholder(str)
    d.train_split = "train"
    d.eval_split = config_dict.placeholder(str)  # None: 'validation' (separate text: source: 'all')
    d.text_column = "text"
    d.text_pair_column = config_dict.placeholder(str)
    d.label_column = "label"
    d.source_column = "source"  # seq2seq: the source text (e.g. 'en' for tfds:wmt14_translate)
    d.target_column = "target"  # seq2seq: the target text (e.g. 'de')
    d.labels = config_dict.placeholder(str)  # classification: "neg,pos"; None = from train split
    d.prompt_column = "prompt"  # dpo: the prompt of a preference pair
    d.chosen_column = "chosen"  # dpo: the preferred completion
    d.rejected_column = "rejected"  # dpo: the other one
    d.tokens_column = "tokens"  # token classification: the list of words
    d.tags_column = "ner_tags"  # token classification: the list of their tags
    d.question_column = "question"  # question answering: the question
    d.answers_column = "answers"  # question answering: {text: [...], answer_start: [...]}
    d.noise_density = 0.15  # span corruption: fraction of tokens dropped into spans
    d.mean_noise_span_length = 3.0  # span corruption: mean tokens per span
    d.whole_word_masking = False  # MLM: mask whole words (wordpiece / bpe tokenizers)
    d.train_window_stride = 1  # causal LM: training windows start every N tokens (0 = seq_len)
    # causal LM eval: windows start every N tokens, each scoring its last N targets, so every
    # target has at least seq_len - N tokens of context (None = seq_len: disjoint windows)
    d.eval_window_stride = config_dict.placeholder(int)
    d.validation_fraction = 0.1  # text: sources keep this last fraction of characters for eval
    d.tfds_data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
    d.tokenizer_sample_chars = 20_000_000  # how much training text a tokenizer is trained on
    d.prefetch_batches = 2
    # training data shards, each its own shuffled stream of batch_size / shards examples per
    # step; hosts split them. None: one per host. Set N on one host to reproduce an N-host run.
    d.shards = config_dict.placeholder(int)
    # `generated` source: a seeded order-k Markov language over an alphabet of letters.
    d.generated = g = ml_collections.ConfigDict()
    g.seed = 1234
    g.alphabet_size = 12
    g.order = 2
    g.concentration = 0.3  # Dirichlet concentration of the transition rows: lower = more peaked
    g.end_probability = 0.01  # chance that a document ends after each character
    g.train_documents = 4000
    g.eval_documents = 200
    g.max_pair_length = 10  # generated:reverse|sort|copy: sources of 1..this many letters

    c.tokenizer = t = ml_collections.ConfigDict()
    t.kind = "char"  # char | byte | bpe | wordpiece | sentencepiece
    t.vocab_size = 1024  # target size when training a bpe/wordpiece/sentencepiece vocabulary
    # a tokenizer folder written by llmjax, or a Hugging Face tokenizer.json / vocab.txt (or its
    # folder); None: train one on the training split
    t.path = config_dict.placeholder(str)
    t.lowercase = False
    # encoder_decoder models: ids appended after the tokenizer's vocabulary, T5's sentinels
    # (<extra_id_k> = the model's last id - k) that span corruption puts in place of the spans
    t.extra_ids = 100

    c.init = i = ml_collections.ConfigDict()
    i.workdir = config_dict.placeholder(str)
    i.hf_path = config_dict.placeholder(str)
    i.step = config_dict.placeholder(int)  # None: the latest checkpoint of init.workdir

    # knowledge distillation (causal_lm): a trained decoder (workdir or Hugging Face folder,
    # same tokenizer; the run takes its tokenizer) whose next-token distributions the model
    # learns: per token (1 - alpha) CE + alpha T^2 KL(teacher^T || model^T) at temperature T
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher_workdir = ""  # "" = no distillation
    c.distill.alpha = 0.5  # 1: the teacher's distributions alone, no data tokens
    c.distill.temperature = 1.0

    c.dpo = ml_collections.ConfigDict()
    c.dpo.beta = 0.1  # objective=dpo: strength of the pull towards the reference model
    c.dpo.loss = "sigmoid"  # sigmoid (DPO) | hinge (SLiC) | ipo (IPO)
    c.dpo.label_smoothing = 0.0  # sigmoid: conservative DPO's assumed label-noise rate

    c.qa = ml_collections.ConfigDict()
    # question answering: tokens shared by a long context's windows (None: seq_len // 4)
    c.qa.doc_stride = config_dict.placeholder(int)
    c.qa.max_answer_tokens = 30  # question answering: the longest span predicted
    c.qa.no_answer = False  # True: may predict "no answer" (SQuAD 2.0), else always a span
    # spans of whole words (True) or of any tokens, word pieces too (False: Hugging Face's
    # run_qa); None: whole words for char and byte tokenizers, tokens for sub-word ones
    c.qa.whole_words = config_dict.placeholder(bool)

    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 0  # 0: no adapters (every parameter trains)
    c.lora.alpha = 16.0  # adapter output scale alpha / rank
    c.lora.targets = "query|value"  # regex over dense-layer paths, e.g. 'layers/0/attention/query'

    c.optimizer = o = ml_collections.ConfigDict()
    o.name = "adamw"  # adamw | adafactor (T5: factored second moments) | muon (matrices)
    o.learning_rate = 1e-3
    o.end_learning_rate = 1e-4
    o.schedule = "cosine"  # cosine | linear | constant | rsqrt | wsd | wsd_sqrt
    o.warmup_steps = 100
    o.decay_steps = config_dict.placeholder(int)  # None: num_train_steps
    o.cooldown_steps = config_dict.placeholder(int)  # wsd: the final decay; None: last 20%
    o.b1 = 0.9
    o.b2 = 0.99
    o.eps = 1e-8
    o.weight_decay = 0.1
    o.grad_clip_norm = 1.0  # 0 disables clipping
    o.accumulation_steps = 1

    c.parallel = p = ml_collections.ConfigDict()
    p.mode = "single"  # single | pmap | mesh
    p.mesh = ml_collections.ConfigDict()
    p.mesh.data = -1
    p.mesh.fsdp = 1
    # context parallelism: each example's tokens split over this many devices (long sequences)
    p.mesh.sequence = 1
    p.mesh.tensor = 1
    # how pmap and data-only meshes sum gradients over devices: auto | flat | per_array. flat:
    # one all-reduce of all of them concatenated; auto: flat on CPU, whose runtime exchanges
    # an all-reduce's arrays one at a time, per array on GPU and TPU
    p.gradient_allreduce = "auto"
    # split this host's CPU into N JAX devices before JAX starts (0: JAX's default, one device
    # or what XLA_FLAGS' --xla_force_host_platform_device_count says); with mode=mesh (or pmap)
    # the step runs data-parallel over them. The llmjax command applies it.
    p.cpu_devices = 0
    # XLA compiler options for the train and eval steps, 'name=value,name=value' (options of
    # another backend are ignored); '' keeps XLA's own defaults. 'auto' (see
    # resolve_compiler_options) picks by compute dtype and CPU (benchmarks/compiler_options.py).
    p.compiler_options = "auto"

    # a jax.profiler trace of training steps [start_step, start_step + num_steps), written to
    # WORKDIR/plugins/profile for TensorBoard's Profile tab (and Perfetto)
    c.profile = ml_collections.ConfigDict()
    c.profile.start_step = config_dict.placeholder(int)  # None: no trace
    c.profile.num_steps = 3

    c.generate = gen = ml_collections.ConfigDict()
    gen.max_new_tokens = 100
    gen.temperature = 1.0
    gen.top_k = 0
    gen.top_p = 1.0
    gen.min_p = 0.0  # drop tokens below min_p x the most likely one's probability (0 = none)
    gen.repetition_penalty = 1.0  # > 1: tokens already in the text less likely (CTRL's; 1 = none)
    gen.seed = 0
    gen.beam_size = 1  # encoder_decoder: > 1 decodes with beam search (eval uses it too)
    gen.length_penalty = 0.6  # beam search: GNMT's alpha; 0 ranks by total log-probability
    # speculative decoding (a decoder's sampling and greedy decoding): a smaller run with the
    # same tokenizer (workdir or Hugging Face folder) proposes draft_tokens tokens per call of
    # this model; the output keeps this model's distribution ("" = no draft)
    gen.draft_workdir = ""
    gen.draft_tokens = 4
    return c


def sibling(config_file: str, name: str) -> ModuleType:
    """The config file `name`.py beside `config_file` (a config file's __file__), as a module:
    config files are loaded by path, not imported from a package."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"llmjax_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_arg(arg: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
    """Parses a config file's `k=v,k=v` argument against `defaults` (which fixes keys and types)."""
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ConfigError(
                f"config argument {item!r}: expected one of {sorted(defaults)} as key=value"
            )
        kind = type(defaults[key])
        values[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return values


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yields ('a.b.c', value) for every leaf key."""
    for key in sorted(config.keys()):
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def nearest_keys(key: str, config: ml_collections.ConfigDict | None = None) -> list[str]:
    """The valid keys closest to a misspelt `key`."""
    keys = [k for k, _ in flatten(config or base_config())]
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    if not close:  # same last component in another section, e.g. `lr` vs `optimizer.learning_rate`
        last = key.rsplit(".", 1)[-1]
        close = [k for k in keys if last in k.rsplit(".", 1)[-1]][:3]
    return close


def unknown_key_message(key: str) -> str:
    near = nearest_keys(key)
    hint = f"; did you mean {' or '.join(near)}?" if near else "; see README's config reference"
    return f"unknown config key '{key}'{hint}"


def to_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
    """A saved run config, re-typed through base_config() so the command line can override it."""
    config = base_config()
    _update(config, json.loads(text), "")
    return config


def _update(config: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
        if key not in config:
            raise ConfigError(f"saved config has {unknown_key_message(prefix + key)}")
        if isinstance(config[key], ml_collections.ConfigDict):
            _update(config[key], value, f"{prefix}{key}.")
        else:
            config[key] = value


def check_keys(config: ml_collections.ConfigDict) -> None:
    """Every key of `config` must be one of base_config()'s (catches typos in config files)."""
    valid = {k for k, _ in flatten(base_config())}
    for key, _ in flatten(config):
        if key not in valid:
            raise ConfigError(unknown_key_message(key))


def parse_compiler_options(text: str) -> dict[str, bool | int | float | str]:
    """'name=value,name=value' -> {name: value}: true/false become bools and numbers numbers,
    as XLA's typed options want; anything else stays a string (an empty value included)."""
    options: dict[str, bool | int | float | str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"parallel.compiler_options: {item!r} is not name=value (write "
                              "'name=' for an empty value)")
        if value.lower() in ("true", "false"):
            options[name] = value.lower() == "true"
            continue
        for kind in (int, float):
            try:
                options[name] = kind(value)
                break
            except ValueError:
                pass
        else:
            options[name] = value
    return options


# XLA:CPU's dots through Eigen rather than YNNPACK: 1.2-1.3x faster float32 train steps at
# 6 x 384 on an AVX2 CPU; on an AVX-512 + AMX one 4-9% slower (YNNPACK's reductions, such as
# the loss's, are faster too). YNNPACK is XLA:CPU's only path to bfloat16 matmul kernels (AMX,
# AVX-512 BF16): without it bfloat16 dots run on Eigen at float32's rate.
EIGEN_DOTS = "xla_cpu_experimental_ynn_fusion_type="


@functools.cache
def cpu_has_avx512() -> bool:
    """Whether this host's CPU has AVX-512 (from Linux's /proc/cpuinfo; False where that cannot
    be read)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any(line.startswith("flags") and "avx512f" in line.split()
                       for line in cpuinfo)
    except OSError:
        return False


def resolve_compiler_options(config: ml_collections.ConfigDict, text: str | None = None
                             ) -> dict[str, Any]:
    """The train and eval steps' XLA options: `text` (default parallel.compiler_options) parsed,
    where 'auto' means Eigen dots for float32 compute on a CPU without AVX-512, and XLA's
    defaults (YNNPACK) otherwise."""
    text = config.parallel.compiler_options if text is None else text
    if text == "auto":
        eigen = config.model.dtype == "float32" and not cpu_has_avx512()
        text = EIGEN_DOTS if eigen else ""
    return parse_compiler_options(text)


def named_sources(spec: str | None, key: str = "data.extra_eval_sources"
                  ) -> list[tuple[str, str]]:
    """[(name, source)] of `data.extra_eval_sources` (or `key`): `NAME=SOURCE;NAME=SOURCE`, a
    name being letters, digits, `_` or `-` (it becomes the metric prefix eval_NAME/)."""
    if not spec:
        return []
    out: list[tuple[str, str]] = []
    for item in spec.split(";"):
        name, sep, source = (part.strip() for part in item.partition("="))
        if not sep or not source or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{key}={spec!r}: write NAME=SOURCE;NAME=SOURCE "
                              "with names of letters, digits, _ or - (e.g. "
                              "wiki=text:wiki.txt;books=tfds:pg19); each is reported as "
                              "eval_NAME/<metric>")
        if any(name == seen for seen, _ in out):
            raise ConfigError(f"{key}={spec!r} names {name!r} twice")
        out.append((name, source))
    return out
