"""Bad input, one case each: the `llmjax train` command exits non-zero with one message that
names the problem, before compiling, and an existing workdir is left exactly as it was."""

import hashlib
import os
import subprocess
import sys

import pytest
from conftest import TEST_XLA_FLAGS, tiny_config, write_config_file
from test_cli import ROOT

from llmjax import configs, validation
from llmjax.train.loop import train_and_evaluate


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    """A finished run (checkpoints, tokenizer, metrics) and its config file."""
    d = tmp_path_factory.mktemp("victim")
    c = tiny_config(**{"num_train_steps": 4, "eval_every_steps": 4, "checkpoint_every_steps": 4,
                       "log_every_steps": 2, "checkpoint_best_metric": "loss"})
    train_and_evaluate(c, d / "run")
    write_config_file(c, d / "cfg.py")
    return d


def snapshot(workdir):
    return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(workdir.rglob("*")) if p.is_file()}


def data_files(d):
    (d / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    (d / "empty.txt").write_text("")
    (d / "bad.tsv").write_text("sentence\tlabel\nfine movie\t1\nno label here\n")
    (d / "good.tsv").write_text("sentence\tlabel\n" + "fine movie\t1\ndull movie\t0\n" * 40)
    (d / "odd.tsv").write_text("sentence\tlabel\nfine movie\t7\n")
    (d / "a_file").write_text("not a directory")
    (d / "src.en").write_text("one\ntwo\nthree\n")
    (d / "tgt.de").write_text("eins\nzwei\n")
    (d / "hf").mkdir(exist_ok=True)
    (d / "hf" / "config.json").write_text('{"model_type": "gpt2"}')


# Classification runs go to a new workdir (the victim would refuse another model first), which
# must not be left behind.
ENCODER = ["--config.model.arch=encoder", "--config.objective=classification",
           "--config.data.text_column=sentence", "--config.tokenizer.kind=byte",
           "--workdir={victim}/new"]
CASES = {
    "unknown key": (["--config.model.num_layer=3"],
                    "unknown config key 'model.num_layer'"),
    "wrong type": (["--config.batch_size=eight"], "batch_size"),
    "batch not divisible": (["--config.optimizer.accumulation_steps=3"],
                            "batch_size=8 is not divisible"),
    "seq_len over max_len": (["--config.seq_len=1000"],
                             "seq_len=1000 is longer than model.max_len=64"),
    "vocabulary over the model's": (["--config.model.vocab_size=8"],
                                    "but model.vocab_size=8"),
    "init from another architecture": ([*ENCODER, "--config.init.workdir={victim}/run"],
                                       "is a model.arch='decoder' run"),
    "missing data": (["--config.data.source=text:{victim}/nothing/*.txt"], "matches no file"),
    "empty data": (["--config.data.source=text:{victim}/empty.txt"], "empty"),
    "tsv row with wrong fields": ([*ENCODER, "--config.data.source=tsv:{victim}/bad.tsv"],
                                  "bad.tsv:3: 1 tab-separated fields, the header has 2"),
    "label outside the label set": ([*ENCODER, "--config.data.source=tsv:{victim}/good.tsv",
                                     "--config.data.eval_source=tsv:{victim}/odd.tsv"],
                                    "label '7' (record 0) is not in the label set"),
    "bytes that are not UTF-8": (["--config.data.source=text:{victim}/latin1.txt"],
                                 "latin1.txt: bytes at offset 3 are not UTF-8"),
    "unwritable workdir": (["--workdir={victim}/a_file/run"], "is not writable"),
    "workdir is a Hugging Face folder": (["--workdir={victim}/hf"],
                                         "is a Hugging Face model folder: train into a new"),
    "workdir holding parameters only": (["--workdir={victim}/run/best"],
                                        "holds parameters only"),
    "best metric the eval does not report": (["--config.checkpoint_best_metric=bleu"],
                                             "'bleu' is not reported by this run's eval"),
    "LoRA targets matching no layer": (["--config.lora.rank=4", "--config.lora.targets=attn",
                                       "--workdir={victim}/new"],
                                      "lora.targets='attn' matches none of the model's dense"),
    "parallel sides of different lengths": (
        ["--config.model.arch=encoder_decoder", "--config.objective=seq2seq",
         "--config.data.source=parallel:{victim}/src.en|{victim}/tgt.de", "--workdir={victim}/new"],
        "have 3 lines and the target files"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_error_and_the_workdir_is_untouched(victim, case):
    data_files(victim)
    args, expected = CASES[case]
    args = [a.format(victim=victim) for a in args]
    if not any(a.startswith("--workdir") for a in args):
        args.append(f"--workdir={victim}/run")
    assert not (victim / "new").exists()
    before = snapshot(victim / "run")
    out = subprocess.run([sys.executable, "-m", "llmjax", "train",
                          f"--config={victim}/cfg.py", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS})
    assert out.returncode != 0
    assert expected in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "first step (compile + run)" not in out.stderr
    assert snapshot(victim / "run") == before
    assert not (victim / "new").exists()


@pytest.mark.parametrize("overrides,expected", [
    ({"model.position_embedding": "relative"}, "built for encoder_decoder models"),
    ({"model.arch": "encoder_decoder", "objective": "seq2seq", "target_seq_len": 100},
     "target_seq_len=100 is longer than model.max_len=64"),
    ({"model.arch": "encoder_decoder", "objective": "span_corruption", "tokenizer.extra_ids": 0},
     "span_corruption needs sentinel ids"),
    ({"model.arch": "encoder_decoder"}, "objective='causal_lm' does not fit"),
    ({"objective": "seq2seq", "seq_len": 48, "target_seq_len": 32},
     r"seq_len=48 \+ target_seq_len=32 is longer than model.max_len=64"),
    ({"parallel.mode": "mesh", "parallel.mesh.data": 3}, "does not fit the 8 devices"),
    ({"parallel.mode": "mesh", "parallel.mesh.data": -1, "parallel.mesh.fsdp": -1},
     "at most one -1"),
    ({"parallel.mode": "mesh", "parallel.mesh.sequence": 3}, "make data x fsdp x sequence x "
     "tensor = 8"),
    ({"parallel.mode": "mesh", "parallel.mesh.sequence": 4, "seq_len": 30},
     "seq_len=30 does not split over parallel.mesh.sequence=4 devices"),
    ({"parallel.mode": "mesh", "parallel.mesh.sequence": 4, "model.arch": "encoder_decoder",
      "objective": "seq2seq", "seq_len": 32, "target_seq_len": 18},
     "target_seq_len=18 does not split over parallel.mesh.sequence=4"),
    ({"parallel.gradient_allreduce": "tree"}, "use auto, flat or per_array"),
    ({"parallel.mode": "mesh", "parallel.mesh.fsdp": 2, "parallel.gradient_allreduce": "flat"},
     "parallel.mesh has fsdp=2, whose gradients are sharded"),
    ({"parallel.cpu_devices": 2}, r"JAX started with 8 CPU devices: .* "
     r"jax.config.update\('jax_num_cpu_devices', 2\)"),
    ({"parallel.cpu_devices": -1}, "parallel.cpu_devices=-1 must be >= 0"),
    ({"data.shards": 3}, "batch_size=8 is not divisible by data.shards=3"),
    ({"model.attention_impl": "cudnn"}, "runs in bfloat16 or float16"),
    ({"model.attention_impl": "xla", "model.attention_dropout_rate": 0.1},
     "has no attention dropout"),
    ({"model.attention_impl": "blockwise", "model.attention_block_size": 0},
     "attention_block_size=0 must be at least 1"),
    ({"model.attention_impl": "flash"}, "use einsum, blockwise, xla or cudnn"),
    ({"model.remat": "some"}, "use none, full or dots"),
    ({"parallel.compiler_options": "xla_cpu_no_such_option=1"},
     "No such compile option: 'xla_cpu_no_such_option'"),
    ({"parallel.compiler_options": "xla_cpu_enable_fast_math=maybe"}, "not a valid bool value"),
    ({"parallel.compiler_options": "xla_cpu_enable_fast_math"}, "is not name=value"),
    ({"generate.top_p": 1.5}, r"top_p=1.5 must be in \(0, 1\]"),
    ({"optimizer.learning_rate": -1e-3}, "optimizer.learning_rate=-0.001 must be >= 0"),
    ({"optimizer.accumulation_steps": 0}, "optimizer.accumulation_steps=0 must be at least 1"),
    ({"model.num_heads": 0}, "model.num_heads=0 must be at least 1"),
    ({"model.rope_scaling": "llama3"}, "scales rotary positions: set model.position_embedding"),
    ({"model.rope_scaling": "ntk", "model.position_embedding": "rotary"},
     "use none, linear, llama3 or yarn"),
    ({"model.arch": "encoder", "objective": "mlm", "model.attention_window": 8},
     "built for decoder models, not model.arch='encoder'"),
    ({"lora.rank": 4, "lora.targets": "query|(value"}, "is not a regular expression"),
    ({"model.global_attention_every": 2}, "set model.attention_window too"),
    ({"data.extra_eval_sources": "a=generated", "data.choice_eval_sources": "a=jsonl:x.jsonl"},
     r"\['a'\] name sets in both"),
    ({"model.arch": "encoder", "objective": "mlm", "data.choice_eval_sources": "a=jsonl:x"},
     "a decoder or encoder_decoder, not model.arch='encoder'"),
    ({"data.choice_eval_sources": "a"}, "data.choice_eval_sources='a': write NAME=SOURCE"),
    ({"data.chat_template": True}, "needs model.arch=decoder and objective=seq2seq"),
    ({"data.pack_pairs": True}, "packs source -> target pairs: it needs objective=seq2seq"),
    ({"objective": "seq2seq", "data.messages_column": "messages"},
     "data.messages_column .* needs data.chat_template=True"),
    ({"model.local_rotary_base": 1e4, "model.attention_window": 8},
     "set model.attention_window and model.position_embedding=rotary"),
    ({"model.attention_softcap": 50.0, "model.attention_impl": "xla"},
     "has no logit soft-capping; use model.attention_impl=einsum"),
    ({"model.arch": "encoder", "objective": "mlm", "model.logit_softcap": 30.0},
     "caps a decoder's output logits"),
    ({"model.post_norms": True, "model.norm_position": "post"}, "set model.norm_position=pre"),
    ({"model.pooler_activation": "sigmoid"}, "use tanh, relu, gelu or gelu_exact"),
    ({"model.norm_position": "middle"}, "use pre, post or output"),
    ({"model.parallel_shared_norm": True}, "set model.parallel_residual=True too"),
    ({"model.lm_head_bias": True}, "needs model.arch=decoder and model.tie_embeddings=False"),
    ({"model.qk_norm_scope": "layer"}, "model.qk_norm_scope='layer': use head or all"),
    ({"model.num_token_types": -1}, "model.num_token_types=-1 must be >= 0"),
    ({"model.rotary_fraction": 0.5}, "set model.position_embedding=rotary, or leave it at 1"),
    ({"model.rotary_fraction": 0.2, "model.position_embedding": "rotary"},
     "of head_dim=16 rotates 3 dims: .* an even number"),
    ({"model.rotary_fraction": 0.0}, r"model.rotary_fraction=0.0 must be in \(0, 1\]"),
    ({"model.parallel_residual": True, "model.norm_position": "post"},
     "model.parallel_residual .* needs model.norm_position=pre"),
    ({"model.attention_softcap": 0.0}, "model.attention_softcap=0.0 must be > 0"),
    ({"model.num_kv_heads": 3}, "num_kv_heads=3 does not divide model.num_heads=2"),
    ({"model.num_experts": 4, "model.moe_router": "top1"}, "use softmax or sigmoid"),
    ({"model.num_experts": 6, "model.moe_groups": 4, "model.moe_group_top_k": 1},
     "model.moe_groups=4 does not divide model.num_experts=6"),
    ({"model.num_experts": 8, "model.moe_groups": 4, "model.moe_group_top_k": 5},
     "choose 1 to model.moe_groups=4 groups"),
    ({"model.num_experts": 8, "model.num_experts_per_token": 3, "model.moe_groups": 4,
      "model.moe_group_top_k": 1}, "from model.moe_group_top_k=1 groups of 2: choose more"),
    ({"model.num_experts": 4, "model.moe_groups": 4, "model.moe_group_top_k": 2,
      "model.num_experts_per_token": 1, "model.moe_router": "sigmoid"},
     "by its best two experts, and model.moe_groups=4 leaves 1"),
    ({"model.moe_group_top_k": 2}, "set model.moe_groups too"),
    ({"model.moe_groups": 2, "model.moe_group_top_k": 1}, "set model.num_experts too"),
    ({"model.num_experts": 4, "model.moe_first_dense": 1, "model.scan_layers": True},
     "set model.moe_first_dense=0 or model.scan_layers=False"),
    ({"model.moe_routed_scale": 0.0}, "model.moe_routed_scale=0.0 must be > 0"),
    ({"optimizer.b2": 1.0}, r"optimizer.b2=1.0 must be in \[0, 1\)"),
    ({"model.dropout_rate": 1.0}, r"model.dropout_rate=1.0 must be in \[0, 1\)"),
    ({"data.noise_density": 0.0}, r"data.noise_density=0.0 must be in \(0, 1\)"),
    ({"generate.top_k": -1}, "top_k=-1 must be >= 0"),
    ({"early_stopping_evals": 3}, "set it too"),
    ({"model.arch": "encoder", "objective": "mlm", "eval_prompts": "a"},
     "eval_prompts are continued by a language model"),
    ({"optimizer.name": "sgd"}, "use adamw, adafactor or muon"),
    ({"profile.start_step": 21}, r"after the run's last step \(num_train_steps=20\)"),
    ({"checkpoint_best_mode": "largest"}, "use auto, min or max"),
    ({"label_smoothing": 1.0}, r"label_smoothing=1.0 must be in \[0, 1\)"),
    ({"z_loss": -1e-4}, "z_loss=-0.0001 must be >= 0"),
    ({"model.arch": "encoder", "objective": "regression", "label_smoothing": 0.1},
     "objective=regression is squared error"),
])
def test_config_contradictions(overrides, expected):
    with pytest.raises(configs.ConfigError, match=expected):
        validation.validate(tiny_config(**overrides))


def test_every_ranged_key_exists_and_the_shipped_configs_are_in_range():
    """A misspelt key in the range table would never be checked."""
    import importlib.util
    import pathlib

    valid = dict(configs.flatten(configs.base_config()))
    assert set(validation._RANGES) <= set(valid)
    root = pathlib.Path(ROOT)
    for path in [*sorted((root / "configs").glob("*.py")),
                 *sorted((root / "experiments").glob("*/config.py"))]:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        validation._check_ranges(module.get_config(None))

