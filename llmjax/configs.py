"""The one base config, config-file argument parsing, validation and (de)serialisation.

Every experiment config in configs/ starts from `base_config()`, so every key a run can have is
defined (with its type) here, and the command line can override any of them.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from typing import Any

import ml_collections
from ml_collections import config_dict

OBJECTIVES_BY_ARCH = {
    "decoder": ("causal_lm", "seq2seq", "dpo"),
    "encoder": ("mlm", "nsp", "mlm_nsp", "classification", "regression",
                "token_classification", "question_answering"),
    "encoder_decoder": ("span_corruption", "seq2seq"),
}


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
    c.eval_samples = 3  # seq2seq / question answering: answers written to the log at each eval
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
    # einsum: the project's own attention (dropout on probabilities, any mask); xla or cudnn:
    # jax.nn.dot_product_attention with that implementation (cudnn = flash attention on NVIDIA
    # GPUs, bfloat16/float16 only); both without attention dropout
    m.attention_impl = "einsum"
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
    d.pack_pairs = False  # seq2seq decoders: pack training pairs several to a sequence
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
    # resolve_compiler_options) picks by compute dtype (benchmarks/compiler_options.py).
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
    return c


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


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_mesh(mesh: ml_collections.ConfigDict) -> None:
    import jax

    from llmjax import sharding

    problem = sharding.mesh_problem(mesh, jax.device_count(), jax.process_count())
    _check(problem is None, problem or "")


def _check_gradient_allreduce(parallel: ml_collections.ConfigDict) -> None:
    from llmjax.train.parallel import GRADIENT_ALLREDUCES

    _check(parallel.gradient_allreduce in GRADIENT_ALLREDUCES,
           f"parallel.gradient_allreduce={parallel.gradient_allreduce!r}: use auto, flat or "
           "per_array")
    if parallel.gradient_allreduce != "flat" or parallel.mode != "mesh":
        return
    import jax

    from llmjax import sharding

    model_parallel = [f"{axis}={size}" for axis, size in sharding.model_axes(
        sharding.mesh_shape(parallel.mesh, jax.device_count())).items()]
    _check(not model_parallel,
           f"parallel.gradient_allreduce=flat sums whole gradients replicated on every device, "
           f"but parallel.mesh has {' and '.join(model_parallel)}, whose gradients are sharded "
           "(XLA places their reductions): use gradient_allreduce=auto, or a data-only mesh "
           "(fsdp=1, tensor=1)")


def _check_cpu_devices(cpu_devices: int) -> None:
    """A set parallel.cpu_devices must be what JAX started with: it takes effect only before
    JAX's first computation (the llmjax command sets it first thing)."""
    import jax

    if not cpu_devices or jax.default_backend() != "cpu":
        return  # a GPU or TPU run: the CPU's devices are not the run's
    _check(jax.local_device_count() == cpu_devices,
           f"parallel.cpu_devices={cpu_devices}, but JAX started with "
           f"{jax.local_device_count()} CPU devices: it must be set before JAX's first "
           "computation. The llmjax command does that; in Python, call "
           f"jax.config.update('jax_num_cpu_devices', {cpu_devices}) right after importing jax")


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
# 6 x 384 on an AVX2 CPU, the same on an AVX-512 one. YNNPACK is XLA:CPU's only path to
# bfloat16 matmul kernels (AMX, AVX-512 BF16): without it bfloat16 dots run on Eigen at
# float32's rate.
EIGEN_DOTS = "xla_cpu_experimental_ynn_fusion_type="


def resolve_compiler_options(config: ml_collections.ConfigDict, text: str | None = None
                             ) -> dict[str, Any]:
    """The train and eval steps' XLA options: `text` (default parallel.compiler_options) parsed,
    where 'auto' means Eigen dots for float32 compute and XLA's defaults (YNNPACK) otherwise."""
    text = config.parallel.compiler_options if text is None else text
    if text == "auto":
        text = EIGEN_DOTS if config.model.dtype == "float32" else ""
    return parse_compiler_options(text)


def _check_compiler_options(config: ml_collections.ConfigDict) -> None:
    """Compiles a trivial function with the options, so a misspelt option or value is named
    now rather than after data preparation, at the first step."""
    parallel = config.parallel
    options = resolve_compiler_options(config)
    if not options:
        return
    import jax
    import jax.numpy as jnp

    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(
            jax.ShapeDtypeStruct((), jnp.float32)).compile()
    except Exception as e:  # XLA's INVALID_ARGUMENT names the option and what is wrong
        raise ConfigError(f"parallel.compiler_options={parallel.compiler_options!r}: "
                          f"{str(e).splitlines()[0]}") from None


def check_generate_options(max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                           beam_size: int, min_p: float = 0.0, repetition_penalty: float = 1.0,
                           seed: int = 0) -> None:
    """Raises ConfigError for decoding options outside their range (the `generate` flags and
    the `generate.*` keys alike)."""
    del seed  # any integer
    _check(max_new_tokens >= 1, f"max_new_tokens={max_new_tokens} must be at least 1")
    _check(temperature >= 0, f"temperature={temperature} must be >= 0 (0 = greedy)")
    _check(top_k >= 0, f"top_k={top_k} must be >= 0 (0 = no top-k filter)")
    _check(0 < top_p <= 1, f"top_p={top_p} must be in (0, 1] (1 = no nucleus filter)")
    _check(0 <= min_p < 1, f"min_p={min_p} must be in [0, 1) (0 = no min-p filter)")
    _check(repetition_penalty > 0, f"repetition_penalty={repetition_penalty} must be > 0 "
                                   "(1 = none; above 1 discourages repeats)")
    _check(beam_size >= 1, f"beam_size={beam_size} must be at least 1 (1 = no beam search)")
    _check(beam_size == 1 or (min_p == 0 and repetition_penalty == 1),
           f"min_p={min_p} and repetition_penalty={repetition_penalty} shape sampling and "
           f"greedy decoding; beam search (beam_size={beam_size}) ranks by log-probability: "
           "leave them at 0 and 1, or set beam_size=1")


_AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)")
_OPEN_FRACTION = (lambda v: 0 < v < 1, "in (0, 1)")
_UNIT = (lambda v: 0 < v <= 1, "in (0, 1]")
# the objectives whose loss model.logits_chunks computes a chunk of the sequence at a time
LOGITS_CHUNKS_OBJECTIVES = ("causal_lm", "seq2seq", "span_corruption")
# The range of every numeric key that has one (None, a placeholder's unset value, is allowed).
_RANGES = {
    **dict.fromkeys(("num_train_steps", "log_every_steps", "eval_every_steps",
                     "checkpoint_every_steps", "batch_size", "seq_len", "target_seq_len",
                     "max_checkpoints_to_keep", "early_stopping_evals", "profile.start_step",
                     "profile.num_steps", "model.num_layers",
                     "model.num_encoder_layers", "model.num_decoder_layers", "model.num_heads",
                     "model.num_kv_heads", "model.attention_window",
                     "model.global_attention_every", "model.query_scale_dim",
                     "model.head_dim", "model.emb_dim", "model.mlp_dim", "model.max_len",
                     "model.vocab_size", "model.num_classes", "model.relative_buckets",
                     "model.relative_max_distance", "model.logits_chunks",
                     "tokenizer.vocab_size",
                     "optimizer.accumulation_steps", "optimizer.decay_steps",
                     "optimizer.cooldown_steps",
                     "data.tokenizer_sample_chars", "data.mean_noise_span_length",
                     "data.generated.alphabet_size", "data.generated.train_documents",
                     "data.generated.eval_documents", "data.generated.max_pair_length",
                     "qa.max_answer_tokens",
                     "data.eval_window_stride"),
                    _AT_LEAST_1),
    **dict.fromkeys(("model.rotary_base", "model.rope_scaling_factor", "lora.alpha",
                     "model.local_rotary_base", "model.attention_softcap", "model.logit_softcap",
                     "model.rope_original_max_len", "model.rope_low_freq_factor",
                     "model.rope_high_freq_factor", "peak_flops_per_device",
                     "model.rope_beta_fast", "model.rope_beta_slow",
                     "model.rope_attention_factor", "dpo.beta",
                     "data.generated.concentration"), _POSITIVE),
    **dict.fromkeys(("optimizer.learning_rate", "optimizer.end_learning_rate",
                     "optimizer.warmup_steps",
                     "optimizer.weight_decay", "optimizer.eps", "optimizer.grad_clip_norm",
                     "model.norm_epsilon", "eval_steps", "eval_decode_examples", "eval_samples",
                     "data.prefetch_batches", "data.train_window_stride",
                     "tokenizer.extra_ids", "data.generated.order", "z_loss", "lora.rank",
                     "qa.doc_stride", "model.num_token_types", "parallel.cpu_devices"),
                    _NON_NEGATIVE),
    **dict.fromkeys(("optimizer.b1", "optimizer.b2", "model.dropout_rate",
                     "model.attention_dropout_rate", "data.validation_fraction",
                     "label_smoothing", "dpo.label_smoothing"), _FRACTION),
    **dict.fromkeys(("data.noise_density", "data.generated.end_probability"), _OPEN_FRACTION),
    "model.rotary_fraction": _UNIT,
}


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    values = dict(flatten(config))
    for key, (within, allowed) in _RANGES.items():
        value = values.get(key)
        _check(value is None or within(value), f"{key}={value!r} must be {allowed}")


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


def validate(config: ml_collections.ConfigDict, num_data_shards: int = 1) -> None:
    """Raises ConfigError for contradictions, before anything is compiled or written."""
    check_keys(config)
    _check_ranges(config)
    m, o = config.model, config.optimizer
    _check(m.arch in OBJECTIVES_BY_ARCH, f"model.arch={m.arch!r}: use one of "
           f"{sorted(OBJECTIVES_BY_ARCH)}")
    _check(config.objective in OBJECTIVES_BY_ARCH[m.arch],
           f"objective={config.objective!r} does not fit model.arch={m.arch!r}: use one of "
           f"{OBJECTIVES_BY_ARCH[m.arch]}")
    _check(config.objective != "regression" or not (config.label_smoothing or config.z_loss),
           "label_smoothing and z_loss regularise cross-entropy losses; objective=regression "
           "is squared error: set them to 0")
    _check(config.objective != "dpo" or not (config.label_smoothing or config.z_loss),
           "label_smoothing and z_loss regularise cross-entropy losses; objective=dpo's loss "
           "is on likelihood ratios: set them to 0")
    _check(config.dpo.loss in ("sigmoid", "hinge", "ipo"),
           f"dpo.loss={config.dpo.loss!r}: use sigmoid (DPO), hinge (SLiC) or ipo (IPO)")
    _check(not config.dpo.label_smoothing or config.dpo.loss == "sigmoid",
           "dpo.label_smoothing is conservative DPO's, for dpo.loss=sigmoid only")
    _check(config.objective != "dpo" or config.init.hf_path or config.init.workdir,
           "objective=dpo measures the policy against the model it starts from: set "
           "init.hf_path or init.workdir (usually a supervised fine-tuning run)")
    _check(config.seq_len <= m.max_len,
           f"seq_len={config.seq_len} is longer than model.max_len={m.max_len}: "
           "raise model.max_len or lower seq_len")
    stride = config.data.eval_window_stride
    _check(stride is None or stride <= config.seq_len,
           f"data.eval_window_stride={stride} is longer than seq_len={config.seq_len}: the "
           "tokens between windows would never be scored; use at most seq_len")
    if m.arch == "decoder" and config.objective in ("seq2seq", "dpo"):
        _check(config.seq_len + config.target_seq_len <= m.max_len,
               f"a seq2seq decoder reads prompt and target as one sequence: seq_len="
               f"{config.seq_len} + target_seq_len={config.target_seq_len} is longer than "
               f"model.max_len={m.max_len}: raise model.max_len or shorten them")
    if m.arch == "encoder_decoder":
        _check(config.target_seq_len <= m.max_len,
               f"target_seq_len={config.target_seq_len} is longer than model.max_len="
               f"{m.max_len}: raise model.max_len or lower target_seq_len")
        _check(config.objective != "span_corruption" or config.tokenizer.extra_ids > 0,
               "objective=span_corruption needs sentinel ids: set tokenizer.extra_ids > 0 "
               "(T5 uses 100)")
    _check(m.emb_dim % m.num_heads == 0 or m.head_dim is not None,
           f"model.emb_dim={m.emb_dim} is not divisible by model.num_heads={m.num_heads}: "
           "set model.head_dim or change one of them")
    _check(m.num_kv_heads is None or m.num_heads % m.num_kv_heads == 0,
           f"model.num_kv_heads={m.num_kv_heads} does not divide model.num_heads={m.num_heads}:"
           " each key/value head serves a whole group of query heads")
    per_step = num_data_shards * o.accumulation_steps
    _check(config.batch_size % per_step == 0,
           f"batch_size={config.batch_size} is not divisible by data-parallel size "
           f"{num_data_shards} x optimizer.accumulation_steps {o.accumulation_steps}: "
           f"use a multiple of {per_step}")
    import jax

    shards = config.data.shards or jax.process_count()
    _check(shards > 0 and shards % jax.process_count() == 0,
           f"data.shards={config.data.shards} must be a positive multiple of the "
           f"{jax.process_count()} processes")
    _check(config.batch_size % shards == 0,
           f"batch_size={config.batch_size} is not divisible by data.shards={shards}: use a "
           f"multiple of {shards}")
    _check(o.name in ("adamw", "adafactor", "muon"),
           f"optimizer.name={o.name!r}: use adamw, adafactor or muon")
    _check(o.schedule in ("cosine", "linear", "constant", "rsqrt", "wsd", "wsd_sqrt"),
           f"optimizer.schedule={o.schedule!r}: use cosine, linear, constant, rsqrt, wsd or "
           "wsd_sqrt")
    _check(not config.early_stopping_evals or config.checkpoint_best_metric,
           f"early_stopping_evals={config.early_stopping_evals} counts evals without improvement "
           "of checkpoint_best_metric: set it too (e.g. checkpoint_best_metric=eval/loss)")
    _check((config.profile.start_step or 0) <= config.num_train_steps,
           f"profile.start_step={config.profile.start_step} is after the run's last step "
           f"(num_train_steps={config.num_train_steps}): choose a step the run trains")
    _check(config.checkpoint_best_mode in ("auto", "min", "max"),
           f"checkpoint_best_mode={config.checkpoint_best_mode!r}: use auto, min or max")
    _check(config.parallel.mode in ("single", "pmap", "mesh"),
           f"parallel.mode={config.parallel.mode!r}: use single, pmap or mesh")
    if config.parallel.mode == "mesh":
        _check_mesh(config.parallel.mesh)
    _check_gradient_allreduce(config.parallel)
    _check_cpu_devices(config.parallel.cpu_devices)
    _check_compiler_options(config)
    g = config.generate
    check_generate_options(g.max_new_tokens, g.temperature, g.top_k, g.top_p, g.beam_size,
                           g.min_p, g.repetition_penalty)
    _check(m.remat in ("none", "full", "dots"),
           f"model.remat={m.remat!r}: use none, full or dots")
    _check(m.logits_chunks == 1 or config.objective in LOGITS_CHUNKS_OBJECTIVES,
           f"model.logits_chunks={m.logits_chunks} splits the language-model losses "
           f"({', '.join(LOGITS_CHUNKS_OBJECTIVES)}), not objective={config.objective}'s: "
           "set model.logits_chunks=1")
    _check(m.position_embedding in ("learned", "sinusoidal", "rotary", "relative", "alibi",
                                    "none"),
           f"model.position_embedding={m.position_embedding!r}: use learned, sinusoidal, "
           "rotary, relative, alibi or none")
    _check(m.rope_scaling in ("none", "linear", "llama3", "yarn"),
           f"model.rope_scaling={m.rope_scaling!r}: use none, linear, llama3 or yarn")
    _check(m.rope_scaling == "none" or m.position_embedding == "rotary",
           f"model.rope_scaling={m.rope_scaling!r} scales rotary positions: set "
           "model.position_embedding=rotary, or model.rope_scaling=none")
    _check(m.rope_scaling != "llama3" or m.rope_high_freq_factor > m.rope_low_freq_factor,
           f"model.rope_high_freq_factor={m.rope_high_freq_factor} must exceed "
           f"model.rope_low_freq_factor={m.rope_low_freq_factor} (llama3 interpolates between)")
    if config.lora.rank:
        import re

        try:
            re.compile(config.lora.targets)
        except re.error as e:
            raise ConfigError(f"lora.targets={config.lora.targets!r} is not a regular "
                              f"expression ({e}): e.g. 'query|value'") from None
    _check(m.attention_window is None or m.arch == "decoder",
           f"model.attention_window is sliding-window causal attention, built for decoder "
           f"models, not model.arch={m.arch!r}: unset it")
    _check(m.global_attention_every is None or m.attention_window is not None,
           f"model.global_attention_every={m.global_attention_every} makes every k-th layer "
           "global among windowed ones: set model.attention_window too")
    _check(m.local_rotary_base is None or (m.attention_window is not None
                                           and m.position_embedding == "rotary"),
           f"model.local_rotary_base={m.local_rotary_base} is the rotary base of the windowed "
           "layers: set model.attention_window and model.position_embedding=rotary")
    _check(m.attention_softcap is None or m.attention_impl == "einsum",
           f"model.attention_softcap: jax.nn.dot_product_attention (model.attention_impl="
           f"{m.attention_impl!r}) has no logit soft-capping; use model.attention_impl=einsum")
    _check(m.logit_softcap is None or m.arch == "decoder",
           f"model.logit_softcap caps a decoder's output logits, not model.arch={m.arch!r}'s")
    _check(m.rotary_fraction == 1.0 or m.position_embedding == "rotary",
           f"model.rotary_fraction={m.rotary_fraction} is the share of each head that rotary "
           "positions rotate: set model.position_embedding=rotary, or leave it at 1")
    head_dim = m.head_dim or m.emb_dim // m.num_heads
    rotary_dim = int(head_dim * m.rotary_fraction)
    _check(m.position_embedding != "rotary" or (rotary_dim >= 2 and rotary_dim % 2 == 0),
           f"model.rotary_fraction={m.rotary_fraction} of head_dim={head_dim} rotates "
           f"{rotary_dim} dims: rotary positions rotate pairs, so it must be an even number "
           "of at least 2")
    _check(not m.parallel_residual or (m.norm_position == "pre"
                                       and m.arch != "encoder_decoder"),
           "model.parallel_residual adds attention and MLP of the same normalised input: it "
           "needs model.norm_position=pre and a decoder or encoder (no cross-attention)")
    _check(not m.parallel_shared_norm or m.parallel_residual,
           "model.parallel_shared_norm makes attention and MLP read one norm side by side: set "
           "model.parallel_residual=True too")
    _check(not m.lm_head_bias or (m.arch == "decoder" and not m.tie_embeddings),
           "model.lm_head_bias adds a bias to a decoder's own output projection: it needs "
           "model.arch=decoder and model.tie_embeddings=False")
    _check(not m.post_norms or m.norm_position == "pre",
           "model.post_norms adds output norms to pre-norm blocks: set model.norm_position=pre")
    _check(not m.scale_embeddings or m.arch != "encoder",
           "model.scale_embeddings is built for decoder and encoder_decoder models")
    _check(m.position_embedding != "alibi" or m.arch == "decoder",
           f"model.position_embedding='alibi' is built for decoder models (BLOOM), not "
           f"model.arch={m.arch!r}")
    _check(m.position_embedding != "relative" or m.arch == "encoder_decoder",
           f"model.position_embedding='relative' (T5 buckets) is built for encoder_decoder "
           f"models; for model.arch={m.arch!r} use learned, sinusoidal or rotary")
    _check(m.attention_impl in ("einsum", "xla", "cudnn"),
           f"model.attention_impl={m.attention_impl!r}: use einsum, xla or cudnn")
    _check(m.attention_impl == "einsum" or m.attention_dropout_rate == 0.0,
           f"model.attention_impl={m.attention_impl!r} has no attention dropout: set "
           "model.attention_dropout_rate=0 or model.attention_impl=einsum")
    _check(m.attention_impl != "cudnn" or m.dtype in ("bfloat16", "float16"),
           f"model.attention_impl='cudnn' runs in bfloat16 or float16, not model.dtype="
           f"{m.dtype!r}: set model.dtype=bfloat16 or model.attention_impl=xla")
    _check(m.pooler_activation in ("tanh", "relu", "gelu", "gelu_exact"),
           f"model.pooler_activation={m.pooler_activation!r}: use tanh, relu, gelu or gelu_exact")
    _check(m.norm in ("layernorm", "rmsnorm"), f"model.norm={m.norm!r}: use layernorm or rmsnorm")
    _check(m.norm_position in ("pre", "post", "output"),
           f"model.norm_position={m.norm_position!r}: use pre, post or output")
    _check(m.qk_norm_scope in ("head", "all"),
           f"model.qk_norm_scope={m.qk_norm_scope!r}: use head or all")
    _check(not (config.init.workdir and config.init.hf_path),
           "init.workdir and init.hf_path are both set: choose one source to fine-tune from")
    from llmjax.data import mixture  # a malformed mixture spec is a config error

    for spec in (config.data.source, config.data.eval_source):
        if spec:
            mixture.members(spec)
    extra = named_sources(config.data.extra_eval_sources)
    choice = named_sources(config.data.choice_eval_sources, "data.choice_eval_sources")
    for _, spec in extra + choice:
        mixture.members(spec)
    both = sorted({n for n, _ in extra} & {n for n, _ in choice})
    _check(not both, f"{both} name sets in both data.extra_eval_sources and "
                     "data.choice_eval_sources: their metrics would share eval_NAME/; rename one")
    _check(not config.data.chat_template or (m.arch == "decoder"
                                             and config.objective in ("seq2seq", "dpo")),
           "data.chat_template lays out a decoder's source -> target pairs: it needs "
           "model.arch=decoder and objective=seq2seq (or dpo)")
    _check(not config.data.pack_pairs or (m.arch == "decoder"
                                          and config.objective == "seq2seq"),
           "data.pack_pairs packs a decoder's source -> target pairs: it needs "
           "model.arch=decoder and objective=seq2seq (causal_lm packs documents always)")
    _check(not config.data.messages_column or config.data.chat_template,
           "data.messages_column lays conversations out with the tokenizer's chat template: "
           "it needs data.chat_template=True (and model.arch=decoder, objective=seq2seq)")
    _check(not choice or m.arch != "encoder",
           "data.choice_eval_sources scores choices by the model's likelihood: a decoder or "
           "encoder_decoder, not model.arch='encoder'")
    _check(config.tokenizer.kind in ("char", "byte", "bpe", "wordpiece", "sentencepiece"),
           f"tokenizer.kind={config.tokenizer.kind!r}: use char, byte, bpe, wordpiece or "
           "sentencepiece")
