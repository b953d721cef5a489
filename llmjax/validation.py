"""Config validation: every check a run's config passes before anything is compiled or written,
each failure a ConfigError that names the key, the problem and the fix."""

from __future__ import annotations

import ml_collections

from llmjax.configs import (
    ConfigError,
    check_keys,
    flatten,
    named_sources,
    resolve_compiler_options,
)
from llmjax.evaluation import text_metrics

# the objectives each architecture can train
OBJECTIVES_BY_ARCH = {
    "decoder": ("causal_lm", "seq2seq", "dpo", "classification", "regression"),
    "encoder": ("mlm", "nsp", "mlm_nsp", "classification", "regression",
                "token_classification", "question_answering"),
    "encoder_decoder": ("span_corruption", "seq2seq"),
}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_mesh(mesh: ml_collections.ConfigDict) -> None:
    import jax

    from llmjax import sharding

    problem = sharding.mesh_problem(mesh, jax.device_count(), jax.process_count())
    _check(problem is None, problem or "")


def _check_sequence_axis(config: ml_collections.ConfigDict) -> None:
    """Context parallelism splits each example's tokens evenly: a length the axis does not
    divide would silently stay whole on every device."""
    n = int(config.parallel.mesh.sequence)
    if n <= 1:
        return
    lengths = {"seq_len": config.seq_len}
    if config.model.arch == "encoder_decoder":
        lengths["target_seq_len"] = config.target_seq_len
    for key, length in lengths.items():
        _check(length % n == 0,
               f"{key}={length} does not split over parallel.mesh.sequence={n} devices: make "
               f"{key} a multiple of {n}, or choose a sequence size that divides it")


def _check_distill(config: ml_collections.ConfigDict) -> None:
    """Distillation (distill.*): an objective that scores a teacher's next-token logits (its
    `teacher_logits` hook), the model's logits whole."""
    d = config.distill
    if not d.teacher_workdir:
        return
    from llmjax.objectives import OBJECTIVES

    distilling = sorted(n for n, o in OBJECTIVES.items() if hasattr(o, "teacher_logits"))
    _check(config.objective in distilling,
           f"distill.teacher_workdir distils next-token distributions ({', '.join(distilling)}), "
           f"not objective={config.objective!r}'s: unset distill.teacher_workdir")
    _check(config.model.logits_chunks == 1,
           f"distillation compares whole [B, L, V] logits with the teacher's: set "
           f"model.logits_chunks=1 (not {config.model.logits_chunks})")
    _check(0.0 <= d.alpha <= 1.0,
           f"distill.alpha={d.alpha} must be in [0, 1] (the weight of the teacher's term; "
           "1 - alpha weights the data's tokens)")
    _check(d.temperature > 0, f"distill.temperature={d.temperature} must be > 0")


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
                           seed: int = 0, draft_tokens: int = 4) -> None:
    """Raises ConfigError for decoding options outside their range (the `generate` flags and
    the `generate.*` keys alike)."""
    del seed  # any integer
    _check(draft_tokens >= 1, f"draft_tokens={draft_tokens} must be at least 1 (tokens the "
                              "draft model proposes per call of the model)")
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
                     "data.eval_window_stride", "model.num_experts_per_token",
                     "model.moe_every", "model.qk_rope_head_dim", "model.v_head_dim",
                     "model.moe_mlp_dim"),
                    _AT_LEAST_1),
    **dict.fromkeys(("model.rotary_base", "model.rope_scaling_factor", "lora.alpha",
                     "model.local_rotary_base", "model.attention_softcap", "model.logit_softcap",
                     "model.rope_original_max_len", "model.rope_low_freq_factor",
                     "model.rope_high_freq_factor", "peak_flops_per_device",
                     "model.rope_beta_fast", "model.rope_beta_slow",
                     "model.rope_attention_factor", "dpo.beta", "model.moe_routed_scale",
                     "data.generated.concentration"), _POSITIVE),
    **dict.fromkeys(("optimizer.learning_rate", "optimizer.end_learning_rate",
                     "optimizer.warmup_steps",
                     "optimizer.weight_decay", "optimizer.eps", "optimizer.grad_clip_norm",
                     "model.norm_epsilon", "eval_steps", "eval_decode_examples", "eval_samples",
                     "data.prefetch_batches", "data.train_window_stride",
                     "tokenizer.extra_ids", "data.generated.order", "z_loss", "lora.rank",
                     "qa.doc_stride", "model.num_token_types", "parallel.cpu_devices",
                     "model.num_experts", "model.moe_capacity_factor", "model.moe_shared_mlp_dim",
                     "model.moe_balance_loss_weight", "model.moe_z_loss_weight",
                     "model.kv_lora_rank", "model.q_lora_rank", "model.rope_mscale_all_dim",
                     "model.moe_first_dense", "model.moe_groups", "model.moe_group_top_k",
                     "model.moe_bias_update_rate", "model.mtp_depth", "model.mtp_loss_weight"),
                    _NON_NEGATIVE),
    **dict.fromkeys(("optimizer.b1", "optimizer.b2", "model.dropout_rate",
                     "model.attention_dropout_rate", "data.validation_fraction",
                     "label_smoothing", "dpo.label_smoothing"), _FRACTION),
    **dict.fromkeys(("data.noise_density", "data.generated.end_probability"), _OPEN_FRACTION),
    "model.rotary_fraction": _UNIT,
}


def _predicts_tokens(objective: str) -> bool:
    """Whether the objective's model keeps a language-model head (a task head alone: no)."""
    from llmjax.objectives import get_objective

    return getattr(get_objective(objective), "predicts_tokens", True)


def _check_decode_metrics(spec: str) -> None:
    try:
        text_metrics.selection(spec)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    values = dict(flatten(config))
    for key, (within, allowed) in _RANGES.items():
        value = values.get(key)
        _check(value is None or within(value), f"{key}={value!r} must be {allowed}")


def _check_routing(m: ml_collections.ConfigDict) -> None:
    """A mixture's router settings (DeepSeek's groups and scores)."""
    _check(m.moe_router in ("softmax", "sigmoid"),
           f"model.moe_router={m.moe_router!r}: use softmax or sigmoid")
    _check(not (m.num_experts and m.scan_layers and m.moe_first_dense),
           f"model.scan_layers runs one block's program for every layer, and "
           f"model.moe_first_dense={m.moe_first_dense} keeps the first blocks dense: set "
           "model.moe_first_dense=0 or model.scan_layers=False")
    if m.moe_groups <= 1:
        _check(not m.moe_group_top_k, f"model.moe_group_top_k={m.moe_group_top_k} picks "
               "groups of experts: set model.moe_groups too, or leave it at 0")
        return
    e, groups = m.num_experts, m.moe_groups
    _check(e > 0, f"model.moe_groups={groups} groups a mixture's experts: set "
           "model.num_experts too, or leave it at 0")
    _check(e % groups == 0, f"model.moe_groups={groups} does not divide model.num_experts={e}")
    per_group = e // groups
    _check(1 <= m.moe_group_top_k <= groups,
           f"model.moe_group_top_k={m.moe_group_top_k}: choose 1 to model.moe_groups={groups} "
           "groups per token")
    _check(m.num_experts_per_token <= m.moe_group_top_k * per_group,
           f"model.num_experts_per_token={m.num_experts_per_token} experts from "
           f"model.moe_group_top_k={m.moe_group_top_k} groups of {per_group}: choose more "
           "groups or fewer experts")
    _check(m.moe_router != "sigmoid" or per_group >= 2,
           f"model.moe_router='sigmoid' scores a group by its best two experts, and "
           f"model.moe_groups={groups} leaves {per_group}: use fewer groups")


def _check_latent_attention(m: ml_collections.ConfigDict) -> None:
    """Multi-head latent attention's settings (model.kv_lora_rank > 0)."""
    if not m.kv_lora_rank:
        _check(not m.q_lora_rank, f"model.q_lora_rank={m.q_lora_rank} is latent attention's "
               "query bottleneck: set model.kv_lora_rank too, or leave it at 0")
        return
    name = f"model.kv_lora_rank={m.kv_lora_rank} (latent attention)"
    _check(m.arch != "encoder_decoder", f"{name} is built for decoder and encoder models, "
           "not model.arch='encoder_decoder' (cross-attention keeps its keys and values)")
    _check(m.position_embedding == "rotary", f"{name} rotates qk_rope_head_dim dims of its "
           f"own: set model.position_embedding=rotary, not {m.position_embedding!r}")
    _check(m.qk_rope_head_dim >= 2 and m.qk_rope_head_dim % 2 == 0,
           f"model.qk_rope_head_dim={m.qk_rope_head_dim}: rotary positions rotate pairs, so it "
           "must be an even number of at least 2")
    _check(m.rotary_fraction == 1.0, f"{name} rotates model.qk_rope_head_dim dims per head, "
           "not a fraction of head_dim: leave model.rotary_fraction at 1")
    _check(not m.qk_norm, f"{name} normalises its latents, not queries and keys: set "
           "model.qk_norm=False")
    _check(m.num_kv_heads is None or m.num_kv_heads == m.num_heads,
           f"{name} makes keys and values for every head from its latent: leave "
           "model.num_kv_heads unset")
    _check(m.attention_impl in ("einsum", "blockwise"), f"{name} runs the project's own "
           f"attention: set model.attention_impl=einsum or blockwise, not {m.attention_impl!r}")


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
    _check_distill(config)
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
    _check_decode_metrics(config.eval_decode_metrics)
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
        _check_sequence_axis(config)
    _check_gradient_allreduce(config.parallel)
    _check_cpu_devices(config.parallel.cpu_devices)
    _check_compiler_options(config)
    g = config.generate
    check_generate_options(g.max_new_tokens, g.temperature, g.top_k, g.top_p, g.beam_size,
                           g.min_p, g.repetition_penalty, draft_tokens=g.draft_tokens)
    _check(m.remat in ("none", "full", "dots"),
           f"model.remat={m.remat!r}: use none, full or dots")
    if m.logits_chunks != 1:
        from llmjax.objectives import OBJECTIVES

        chunked = sorted(n for n, o in OBJECTIVES.items() if getattr(o, "chunks_logits", False))
        _check(config.objective in chunked,
               f"model.logits_chunks={m.logits_chunks} splits the language-model losses "
               f"({', '.join(chunked)}), not objective={config.objective}'s: "
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
    _check(m.attention_softcap is None or m.attention_impl in ("einsum", "blockwise"),
           f"model.attention_softcap: jax.nn.dot_product_attention (model.attention_impl="
           f"{m.attention_impl!r}) has no logit soft-capping; use model.attention_impl=einsum "
           "or blockwise")
    _check(m.logit_softcap is None or m.arch == "decoder",
           f"model.logit_softcap caps a decoder's output logits, not model.arch={m.arch!r}'s")
    _check(m.rotary_fraction == 1.0 or m.position_embedding == "rotary",
           f"model.rotary_fraction={m.rotary_fraction} is the share of each head that rotary "
           "positions rotate: set model.position_embedding=rotary, or leave it at 1")
    _check_latent_attention(m)
    head_dim = m.head_dim or m.emb_dim // m.num_heads
    rotary_dim = int(head_dim * m.rotary_fraction)
    _check(m.position_embedding != "rotary" or m.kv_lora_rank
           or (rotary_dim >= 2 and rotary_dim % 2 == 0),
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
    _check(not m.num_experts or m.num_experts > 1,
           "model.num_experts=1 is a dense feed-forward layer with a router: use 0 (dense) or "
           "at least 2")
    _check(not m.num_experts or m.num_experts_per_token <= m.num_experts,
           f"model.num_experts_per_token={m.num_experts_per_token} experts per token of "
           f"model.num_experts={m.num_experts}: choose at most num_experts")
    _check(not (m.num_experts and m.scan_layers and m.moe_every > 1),
           f"model.scan_layers runs one block's program for every layer, and model.moe_every="
           f"{m.moe_every} mixes dense and mixture blocks: set model.moe_every=1 or "
           "model.scan_layers=False")
    _check_routing(m)
    _check(not m.mtp_depth or (m.arch == "decoder" and config.objective == "causal_lm"),
           f"model.mtp_depth={m.mtp_depth} adds multi-token prediction to causal language "
           f"modelling: it needs model.arch=decoder and objective=causal_lm, not "
           f"{m.arch!r} / {config.objective!r}")
    _check(m.attention_impl in ("einsum", "blockwise", "xla", "cudnn"),
           f"model.attention_impl={m.attention_impl!r}: use einsum, blockwise, xla or cudnn")
    _check(m.attention_block_size >= 1,
           f"model.attention_block_size={m.attention_block_size} must be at least 1 (keys per "
           "block of attention_impl=blockwise)")
    _check(m.attention_impl in ("einsum", "blockwise") or m.attention_dropout_rate == 0.0,
           f"model.attention_impl={m.attention_impl!r} has no attention dropout: set "
           "model.attention_dropout_rate=0 or model.attention_impl=einsum or blockwise")
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
    _check(not config.data.pack_pairs or config.objective == "seq2seq",
           "data.pack_pairs packs source -> target pairs: it needs objective=seq2seq "
           "(causal_lm packs documents always)")
    _check(not config.data.messages_column or config.data.chat_template,
           "data.messages_column lays conversations out with the tokenizer's chat template: "
           "it needs data.chat_template=True (and model.arch=decoder, objective=seq2seq)")
    _check(not choice or m.arch != "encoder",
           "data.choice_eval_sources scores choices by the model's likelihood: a decoder or "
           "encoder_decoder, not model.arch='encoder'")
    _check(config.eval_prompts is None or (m.arch == "decoder"
                                            and config.objective == "causal_lm"),
           f"eval_prompts are continued by a language model: model.arch=decoder and "
           f"objective=causal_lm, not {m.arch} / {config.objective}")
    _check(not choice or _predicts_tokens(config.objective),
           f"data.choice_eval_sources scores choices by the model's likelihood; "
           f"objective={config.objective} trains a head without a language model: drop it")
    _check(config.tokenizer.kind in ("char", "byte", "bpe", "wordpiece", "sentencepiece"),
           f"tokenizer.kind={config.tokenizer.kind!r}: use char, byte, bpe, wordpiece or "
           "sentencepiece")
